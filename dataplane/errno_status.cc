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
  return absl::Status(ErrnoCode(err), absl::StrCat(what, ": ", ErrnoText(err)));
}

}  // namespace tunnelagent::dataplane
