#include "dataplane/tun/virtio_net.h"

#include <cstring>

namespace tunnelagent::dataplane {

VirtioRead ClassifyVirtioRead(const VirtioNetHeader& header, uint8_t* frame, size_t len,
                              size_t* segments, DropReason* reason) {
  const uint8_t gso = header.gso_type & static_cast<uint8_t>(~kGsoEcn);
  if (gso == kGsoNone) {
    if ((header.flags & kVirtioNetFlagNeedsCsum) != 0 &&
        !CompleteChecksum(frame, len, header.csum_start, header.csum_offset)) {
      *reason = DropReason::kBadInnerPacket;
      return VirtioRead::kMalformed;
    }
    return VirtioRead::kPacket;
  }
  *reason = DropReason::kBadInnerPacket;
  *segments = CountSegments(header, frame, len, reason);
  return *segments == 0 ? VirtioRead::kMalformed : VirtioRead::kSuperPacket;
}

uint8_t* PrependEmptyVirtioNetHeader(uint8_t* packet) {
  uint8_t* start = packet - kVirtioNetHeaderLen;
  std::memset(start, 0, kVirtioNetHeaderLen);
  return start;
}

}  // namespace tunnelagent::dataplane
