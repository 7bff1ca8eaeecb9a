// Kernel errors as absl::Status: one mapping for every part of the dataplane, so the same
// errno means the same gRPC code whichever system call returned it.
#ifndef TUNNELAGENT_DATAPLANE_ERRNO_STATUS_H_
#define TUNNELAGENT_DATAPLANE_ERRNO_STATUS_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace tunnelagent::dataplane {

// strerror text, thread-safe.
std::string ErrnoText(int err);

// "<what>: <strerror>": NOT_FOUND for ENODEV, ENOENT, ESRCH and EADDRNOTAVAIL (nothing there);
// ALREADY_EXISTS for EEXIST; PERMISSION_DENIED for EPERM and EACCES; INVALID_ARGUMENT for
// EINVAL and ERANGE; FAILED_PRECONDITION for ENETDOWN (a link that must come up first) and for
// what the kernel or a sandbox does not offer (ENOSYS, EOPNOTSUPP, EAFNOSUPPORT,
// EPROTONOSUPPORT); RESOURCE_EXHAUSTED for EMFILE and ENFILE (saying descriptors are out),
// ENOMEM and ENOBUFS; INTERNAL otherwise.
absl::Status ErrnoStatus(int err, absl::string_view what);

// The code alone, for callers that compose their own message.
absl::StatusCode ErrnoCode(int err);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_ERRNO_STATUS_H_
