#include "dataplane/tun_device.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cctype>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tunnelagent::dataplane {
namespace {

constexpr char kTunPath[] = "/dev/net/tun";

std::string ErrnoText(int err) {
  char buf[128];
  return strerror_r(err, buf, sizeof(buf));  // GNU variant
}

// The kernel's own rules (dev_valid_name), checked here so the caller gets a clear message;
// '%' is refused too because the kernel would treat "tun%d" as a template and pick a free
// name, leaving the agent with a device it did not name.
absl::Status CheckName(const std::string& name) {
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return absl::InvalidArgumentError(absl::StrCat(
        "invalid device name \"", name, "\": it must have 1 to ", IFNAMSIZ - 1, " characters"));
  }
  if (name == "." || name == "..") {
    return absl::InvalidArgumentError(absl::StrCat("invalid device name \"", name, "\""));
  }
  for (char c : name) {
    if (c == '/' || c == ':' || c == '%' || c == '\0' || isspace(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid device name \"", name, "\": it may not contain '/', ':', '%' or spaces"));
    }
  }
  return absl::OkStatus();
}

absl::Status StatusFromErrno(int err, const std::string& what) {
  const std::string message = absl::StrCat(what, ": ", ErrnoText(err));
  switch (err) {
    case EBUSY:
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case EPERM:
    case EACCES:
      return absl::PermissionDeniedError(message);
    case EINVAL:
      return absl::InvalidArgumentError(message);
    case ENODEV:
    case ENOENT:
      return absl::NotFoundError(message);
    default:
      return absl::InternalError(message);
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<TunDevice>> TunDevice::Create(const std::string& name, Kind kind) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  const char* kind_name = kind == Kind::kTun ? "TUN" : "TAP";
  const std::string what = absl::StrCat("creating ", kind_name, " device ", name);
  // IFF_TUN_EXCL below already refuses an existing TUN/TAP device, but with EBUSY, which
  // reads badly; this also names the case of a different kind of device with that name.
  if (if_nametoindex(name.c_str()) != 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("a network device named ", name, " already exists"));
  }

  // Blocking on purpose: io_uring arms its own poll on the descriptor.
  const int fd = open(kTunPath, O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENODEV || err == ENXIO) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": no /dev/net/tun (", ErrnoText(err),
                       "); load the tun module or create the node"));
    }
    return StatusFromErrno(err, absl::StrCat(what, ": opening ", kTunPath));
  }

  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  memcpy(ifr.ifr_name, name.data(), name.size());
  // IFF_TUN_EXCL makes the kernel refuse to attach to a device of this name that appeared
  // since the check above, so a device the agent did not create is never taken over.
  ifr.ifr_flags =
      static_cast<short>((kind == Kind::kTun ? IFF_TUN : IFF_TAP) | IFF_NO_PI | IFF_TUN_EXCL);
  if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
    const int err = errno;
    close(fd);
    if (err == EBUSY || err == EEXIST) {
      return absl::AlreadyExistsError(
          absl::StrCat("a network device named ", name, " already exists"));
    }
    return StatusFromErrno(err, what);
  }

  const unsigned int ifindex = if_nametoindex(name.c_str());
  if (ifindex == 0) {
    const int err = errno;
    close(fd);  // the device goes with it
    return absl::InternalError(
        absl::StrCat(what, ": the new device has no ifindex: ", ErrnoText(err)));
  }
  return std::unique_ptr<TunDevice>(new TunDevice(fd, static_cast<int>(ifindex), name, kind));
}

TunDevice::~TunDevice() {
  if (fd_ >= 0) close(fd_);
}

}  // namespace tunnelagent::dataplane
