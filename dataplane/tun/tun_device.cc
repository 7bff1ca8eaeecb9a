#include "dataplane/tun/tun_device.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "dataplane/errno_status.h"
#include "dataplane/packet/offload.h"

namespace tunnelagent::dataplane {
namespace {

constexpr char kTunPath[] = "/dev/net/tun";

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

// EBUSY from TUNSETIFF: the name is taken; everything else as the dataplane maps errno.
absl::Status StatusFromErrno(int err, const std::string& what) {
  if (err == EBUSY) return absl::AlreadyExistsError(absl::StrCat(what, ": ", ErrnoText(err)));
  return ErrnoStatus(err, what);
}

const char* KindName(TunDevice::Kind kind) { return kind == TunDevice::Kind::kTun ? "TUN" : "TAP"; }

// TUN_F_USO4/6 (linux/if_tun.h since 6.2), spelt out for older headers.
constexpr unsigned kTunUso4 = 0x20;
constexpr unsigned kTunUso6 = 0x40;

short KindFlag(TunDevice::Kind kind) { return kind == TunDevice::Kind::kTun ? IFF_TUN : IFF_TAP; }

// The ifindex of the link named `name`, or 0 with errno (ENODEV: no such link), as
// if_nametoindex answers. That opens, asks and closes a socket of its own each time: three
// system calls where one does, and a restart looks up thousands of devices twice each. One
// socket, made at the first lookup and kept, answers all of them; it asks in the network
// namespace the process was in then, which the agent never leaves. Without it (out of
// descriptors at the first lookup), if_nametoindex as before.
unsigned LinkIndex(const std::string& name) {
  static const int lookup = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (lookup < 0) return if_nametoindex(name.c_str());
  ifreq ifr;
  memset(&ifr, 0, sizeof ifr);
  memcpy(ifr.ifr_name, name.data(), std::min(name.size(), sizeof ifr.ifr_name - 1));
  if (ioctl(lookup, SIOCGIFINDEX, &ifr) < 0) return 0;
  return static_cast<unsigned>(ifr.ifr_ifindex);
}

// Blocking on purpose: io_uring arms its own poll on the descriptor.
absl::StatusOr<int> OpenTun(const std::string& what) {
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
  return fd;
}

struct ifreq Request(const std::string& name, short flags) {
  struct ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  memcpy(ifr.ifr_name, name.data(), name.size());
  ifr.ifr_flags = flags;
  return ifr;
}

}  // namespace

absl::StatusOr<std::unique_ptr<TunDevice>> TunDevice::Create(const std::string& name, Kind kind) {
  return CreateWith(name, kind, /*offload=*/false, /*multi_queue=*/false);
}

absl::StatusOr<std::unique_ptr<TunDevice>> TunDevice::CreateWith(const std::string& name, Kind kind,
                                                                 bool offload, bool multi_queue) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  offload = offload && kind == Kind::kTun;
  const std::string what = absl::StrCat("creating ", KindName(kind), " device ", name);
  // IFF_TUN_EXCL below already refuses an existing TUN/TAP device, but with EBUSY, which
  // reads badly; this also names the case of a different kind of device with that name.
  if (LinkIndex(name) != 0) {
    return absl::AlreadyExistsError(
        absl::StrCat("a network device named ", name, " already exists"));
  }

  absl::StatusOr<int> fd = OpenTun(what);
  if (!fd.ok()) return fd.status();

  // IFF_TUN_EXCL makes the kernel refuse to attach to a device of this name that appeared
  // since the check above, so a device the agent did not create is never taken over.
  struct ifreq ifr = Request(
      name, static_cast<short>(KindFlag(kind) | IFF_NO_PI | IFF_TUN_EXCL |
                               (offload ? IFF_VNET_HDR : 0) | (multi_queue ? IFF_MULTI_QUEUE : 0)));
  if (ioctl(*fd, TUNSETIFF, &ifr) < 0) {
    const int err = errno;
    close(*fd);
    if (err == EBUSY || err == EEXIST) {
      return absl::AlreadyExistsError(
          absl::StrCat("a network device named ", name, " already exists"));
    }
    return StatusFromErrno(err, what);
  }

  const unsigned int ifindex = LinkIndex(name);
  if (ifindex == 0) {
    const int err = errno;
    close(*fd);  // the device goes with it
    // Without the lookup socket, if_nametoindex opens one of its own to ask: out of
    // descriptors, that fails, and the cause is the descriptors, not the device.
    if (err == EMFILE || err == ENFILE) {
      return ErrnoStatus(err, absl::StrCat(what, ": looking up its ifindex"));
    }
    return absl::InternalError(
        absl::StrCat(what, ": the new device has no ifindex: ", ErrnoText(err)));
  }
  std::unique_ptr<TunDevice> device(
      new TunDevice(*fd, static_cast<int>(ifindex), name, kind, /*persistent=*/false));
  device->multi_queue_ = multi_queue;
  if (offload) {
    if (absl::Status s = device->SetUpOffload(); !s.ok()) return s;
  }
  return device;
}

absl::StatusOr<std::unique_ptr<TunDevice>> TunDevice::Create(const std::string& name, Kind kind,
                                                             const CreateOptions& options) {
  absl::StatusOr<std::unique_ptr<TunDevice>> device =
      CreateWith(name, kind, options.offload, options.multi_queue);
  if (!device.ok()) return device.status();
  // Until the end the device is not persistent, so returning early removes it.
  if (!options.alias.empty()) {
    Netlink* netlink = options.netlink;
    std::unique_ptr<Netlink> own_netlink;
    if (netlink == nullptr) {
      absl::StatusOr<std::unique_ptr<Netlink>> opened = Netlink::Open();
      if (!opened.ok()) return opened.status();
      own_netlink = *std::move(opened);
      netlink = own_netlink.get();
    }
    if (absl::Status s = netlink->SetLinkAlias((*device)->ifindex(), options.alias); !s.ok()) {
      return s;
    }
  }
  if (options.persistent) {
    if (absl::Status s = (*device)->SetPersistent(true); !s.ok()) return s;
  }
  return device;
}

absl::StatusOr<std::unique_ptr<TunDevice>> TunDevice::Attach(const std::string& name, Kind kind) {
  return Attach(name, kind, /*offload=*/false);
}

absl::StatusOr<std::unique_ptr<TunDevice>> TunDevice::Attach(const std::string& name, Kind kind,
                                                             bool offload) {
  return Attach(name, kind, offload, /*multi_queue=*/false);
}

unsigned TunDevice::IndexOf(const std::string& name) { return LinkIndex(name); }

absl::StatusOr<int> TunDevice::OpenQueue(const std::string& name, Kind kind, bool vnet_header,
                                         int ifindex) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  const std::string what = absl::StrCat("opening a queue of ", KindName(kind), " device ", name);
  absl::StatusOr<int> fd = OpenTun(what);
  if (!fd.ok()) return fd.status();
  struct ifreq ifr = Request(name, static_cast<short>(KindFlag(kind) | IFF_NO_PI | IFF_MULTI_QUEUE |
                                                      (vnet_header ? IFF_VNET_HDR : 0)));
  if (ioctl(*fd, TUNSETIFF, &ifr) < 0) {
    const int err = errno;
    close(*fd);
    if (err == EINVAL) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": the device has a single queue, or is of another kind"));
    }
    return StatusFromErrno(err, what);
  }
  // Had the device gone since, TUNSETIFF made a new one, which closing the fd removes again.
  if (const unsigned found = LinkIndex(name); found != static_cast<unsigned>(ifindex)) {
    const int err = errno;
    close(*fd);
    if (found == 0 && (err == EMFILE || err == ENFILE)) {  // its lookup socket failed
      return ErrnoStatus(err, absl::StrCat(what, ": looking up its ifindex"));
    }
    return absl::NotFoundError(absl::StrCat(what, ": the device is gone"));
  }
  return *fd;
}

absl::StatusOr<std::unique_ptr<TunDevice>> TunDevice::Attach(const std::string& name, Kind kind,
                                                             bool offload, bool multi_queue) {
  if (absl::Status s = CheckName(name); !s.ok()) return s;
  offload = offload && kind == Kind::kTun;
  const std::string what = absl::StrCat("attaching to ", KindName(kind), " device ", name);
  if (LinkIndex(name) == 0) {
    return absl::NotFoundError(absl::StrCat(what, ": there is no network device of that name"));
  }

  absl::StatusOr<int> fd = OpenTun(what);
  if (!fd.ok()) return fd.status();

  // Without IFF_TUN_EXCL the kernel attaches to an existing TUN/TAP device of that name. The
  // flags it keeps (IFF_VNET_HDR among them) are the ones given now, whatever the last run used.
  const short flags_wanted =
      static_cast<short>(KindFlag(kind) | IFF_NO_PI | (offload ? IFF_VNET_HDR : 0));
  struct ifreq ifr =
      Request(name, static_cast<short>(flags_wanted | (multi_queue ? IFF_MULTI_QUEUE : 0)));
  int attached = ioctl(*fd, TUNSETIFF, &ifr);
  if (attached < 0 && errno == EINVAL) {
    // The kernel refuses a queue-mode mismatch with EINVAL: a device an earlier run made with
    // the other mode is attached as it is (one queue serves either way); another kind fails
    // again below.
    multi_queue = !multi_queue;
    ifr = Request(name, static_cast<short>(flags_wanted | (multi_queue ? IFF_MULTI_QUEUE : 0)));
    attached = ioctl(*fd, TUNSETIFF, &ifr);
  }
  if (attached < 0) {
    const int err = errno;
    close(*fd);
    switch (err) {
      // The kernel's answer for a link that is not a TUN/TAP device of this kind.
      case EINVAL:
        return absl::FailedPreconditionError(absl::StrCat(what, ": the network device ", name,
                                                          " is not a ", KindName(kind), " device"));
      // A device without multiple queues takes one fd only.
      case EBUSY:
        return absl::FailedPreconditionError(
            absl::StrCat(what, ": the device is in use (another process has it open)"));
      default:
        return StatusFromErrno(err, what);
    }
  }

  // Check what was attached. If the device went away after the lookup above, TUNSETIFF
  // created a new one: that one is not persistent and goes again when the fd is closed.
  memset(&ifr, 0, sizeof(ifr));
  if (ioctl(*fd, TUNGETIFF, &ifr) < 0) {
    const int err = errno;
    close(*fd);
    return StatusFromErrno(err, absl::StrCat(what, ": reading the device's flags"));
  }
  const int flags = static_cast<unsigned short>(ifr.ifr_flags);
  if ((flags & IFF_PERSIST) == 0) {
    close(*fd);
    return absl::NotFoundError(absl::StrCat(what, ": the device disappeared"));
  }
  if ((flags & (IFF_TUN | IFF_TAP)) != KindFlag(kind)) {
    close(*fd);
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": the network device ", name, " is not a ", KindName(kind), " device"));
  }

  const unsigned int ifindex = LinkIndex(name);
  if (ifindex == 0) {
    const int err = errno;
    close(*fd);
    return absl::NotFoundError(absl::StrCat(what, ": the device disappeared: ", ErrnoText(err)));
  }
  std::unique_ptr<TunDevice> device(
      new TunDevice(*fd, static_cast<int>(ifindex), name, kind, /*persistent=*/true));
  device->multi_queue_ = multi_queue;
  if (offload) {
    if (absl::Status s = device->SetUpOffload(); !s.ok()) return s;
  } else {
    // A device a run with offloads left behind keeps its features: without the header to say
    // so, a super-packet could not be told from a packet.
    ioctl(device->fd_, TUNSETOFFLOAD, 0UL);
  }
  return device;
}

absl::StatusOr<std::unique_ptr<TunDevice>> TunDevice::Adopt(int fd, Kind kind) {
  ifreq ifr;
  memset(&ifr, 0, sizeof(ifr));
  if (ioctl(fd, TUNGETIFF, &ifr) < 0) {
    const int err = errno;
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat("adopting descriptor ", fd, ": not a TUN/TAP device: ", ErrnoText(err)));
  }
  const std::string name(ifr.ifr_name, strnlen(ifr.ifr_name, sizeof ifr.ifr_name));
  const std::string what = absl::StrCat("adopting device ", name);
  const int flags = static_cast<unsigned short>(ifr.ifr_flags);
  if ((flags & IFF_PERSIST) == 0 || (flags & (IFF_TUN | IFF_TAP)) != KindFlag(kind)) {
    close(fd);
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": not a persistent ", KindName(kind), " device"));
  }
  const unsigned int ifindex = LinkIndex(name);
  if (ifindex == 0) {
    const int err = errno;
    close(fd);
    return absl::NotFoundError(absl::StrCat(what, ": the device disappeared: ", ErrnoText(err)));
  }
  std::unique_ptr<TunDevice> device(
      new TunDevice(fd, static_cast<int>(ifindex), name, kind, /*persistent=*/true));
  device->multi_queue_ = (flags & IFF_MULTI_QUEUE) != 0;
  if ((flags & IFF_VNET_HDR) != 0) {
    if (absl::Status s = device->SetUpOffload(); !s.ok()) return s;
  }
  return device;
}

absl::Status TunDevice::SetUpOffload() {
  int header_len = static_cast<int>(kVirtioNetHeaderLen);
  if (ioctl(fd_, TUNSETVNETHDRSZ, &header_len) < 0) {
    return ErrnoStatus(errno, absl::StrCat("device ", name_, ": TUNSETVNETHDRSZ"));
  }
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  // The header's fields are little-endian by the offload code's reading; ask for that.
  int little_endian = 1;
  if (ioctl(fd_, TUNSETVNETLE, &little_endian) < 0) {
    return ErrnoStatus(errno, absl::StrCat("device ", name_, ": TUNSETVNETLE"));
  }
#endif
  offload_ = true;
  // USO (UDP segmentation) came with Linux 6.2; older kernels refuse the whole request.
  const unsigned base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
  for (unsigned features : {base | kTunUso4 | kTunUso6, base}) {
    if (ioctl(fd_, TUNSETOFFLOAD, static_cast<unsigned long>(features)) == 0) {
      offload_features_ = features;
      return absl::OkStatus();
    }
  }
  // The header stays (reads and writes carry it), but nothing is offloaded: every packet
  // comes whole, with its checksum done.
  return absl::OkStatus();
}

bool TunDevice::udp_offload() const {
  return (offload_features_ & (kTunUso4 | kTunUso6)) == (kTunUso4 | kTunUso6);
}

absl::Status TunDevice::SetPersistent(bool persistent) {
  if (ioctl(fd_, TUNSETPERSIST, persistent ? 1UL : 0UL) < 0) {
    const int err = errno;
    const std::string what =
        absl::StrCat("making device ", name_, persistent ? " persistent" : " not persistent");
    // The fd outlived its device (deleted through netlink).
    if (err == EBADFD) {
      return absl::NotFoundError(absl::StrCat(what, ": the device has been deleted"));
    }
    return StatusFromErrno(err, what);
  }
  persistent_ = persistent;
  return absl::OkStatus();
}

TunDevice::~TunDevice() {
  if (fd_ >= 0) close(fd_);
}

int WriteTunPacket(int fd, bool vnet_header, const uint8_t* packet, size_t len) {
  uint8_t header[kVirtioNetHeaderLen] = {};
  iovec parts[2] = {{header, sizeof header}, {const_cast<uint8_t*>(packet), len}};
  const int first = vnet_header ? 0 : 1;
  const ssize_t n = writev(fd, parts + first, 2 - first);
  return n >= 0 ? static_cast<int>(n) : -errno;
}

}  // namespace tunnelagent::dataplane
