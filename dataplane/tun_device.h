// A TUN (layer 3) or TAP (layer 2) device owned through its file descriptor.
#ifndef TUNNELAGENT_DATAPLANE_TUN_DEVICE_H_
#define TUNNELAGENT_DATAPLANE_TUN_DEVICE_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"

namespace tunnelagent::dataplane {

class TunDevice {
 public:
  enum class Kind { kTun, kTap };

  // Creates the device `name` (IFF_NO_PI; exclusive: ALREADY_EXISTS when any link of that
  // name exists, so a device the agent did not create is never taken over). The fd is
  // blocking, which is what io_uring wants: it arms its own poll.
  // The device is not persistent: it disappears when the object is destroyed.
  static absl::StatusOr<std::unique_ptr<TunDevice>> Create(const std::string& name, Kind kind);
  ~TunDevice();
  TunDevice(const TunDevice&) = delete;
  TunDevice& operator=(const TunDevice&) = delete;

  int fd() const { return fd_; }
  int ifindex() const { return ifindex_; }
  const std::string& name() const { return name_; }
  Kind kind() const { return kind_; }

 private:
  TunDevice(int fd, int ifindex, std::string name, Kind kind)
      : fd_(fd), ifindex_(ifindex), name_(std::move(name)), kind_(kind) {}
  int fd_;
  int ifindex_;
  std::string name_;
  Kind kind_;
};

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_TUN_DEVICE_H_
