#include "dataplane/errno_status.h"

#include <errno.h>
#include <string.h>

#include "absl/strings/str_cat.h"

namespace tunnelagent::dataplane {

std::string ErrnoText(int err) {
  char buf[128];
  // GNU strerror_r: returns a pointer that may or may not be `buf`.
  return strerror_r(err, buf, sizeof(buf));
}

absl::StatusCode ErrnoCode(int err) {
  switch (err) {
    case ENODEV:
    case ENOENT:
    case ESRCH:
    case EADDRNOTAVAIL:  // e.g. deleting an address that is not configured
      return absl::StatusCode::kNotFound;
    case EEXIST:
      return absl::StatusCode::kAlreadyExists;
    case EPERM:
    case EACCES:
      return absl::StatusCode::kPermissionDenied;
    case EINVAL:
    case ERANGE:
      return absl::StatusCode::kInvalidArgument;
    // Out of descriptors (the process's or the system's) or of kernel memory: a limit that
    // frees up as things close, not a fault of the request or of the agent.
    case EMFILE:
    case ENFILE:
    case ENOMEM:
    case ENOBUFS:
      return absl::StatusCode::kResourceExhausted;
    case ENETDOWN:
    case ENOSYS:
    case EOPNOTSUPP:
    case EAFNOSUPPORT:
    case EPROTONOSUPPORT:
      return absl::StatusCode::kFailedPrecondition;
    default:
      return absl::StatusCode::kInternal;
  }
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  if (err == EMFILE || err == ENFILE) {
    // strerror's "Too many open files" does not say whose limit it is.
    return absl::ResourceExhaustedError(absl::StrCat(
        what, ": out of file descriptors (", ErrnoText(err), "; ",
        err == EMFILE ? "the agent's RLIMIT_NOFILE" : "the system's fs.file-max", " is reached)"));
  }
  return absl::Status(ErrnoCode(err), absl::StrCat(what, ": ", ErrnoText(err)));
}

}  // namespace tunnelagent::dataplane
