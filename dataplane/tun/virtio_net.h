// How packets are framed on a TUN device opened with offloads (IFF_VNET_HDR): a virtio-net
// header in front of every packet read and every packet written, as the kernel's tun driver has
// it (tun_get_user, tun_put_user). Pure: the packet core uses it and makes no system call; the
// header's codec, segmentation and coalescing are dataplane/packet/offload.h's, the device and
// its writes tun_device.h's.
#ifndef TUNNELAGENT_DATAPLANE_TUN_VIRTIO_NET_H_
#define TUNNELAGENT_DATAPLANE_TUN_VIRTIO_NET_H_

#include <cstddef>
#include <cstdint>

#include "dataplane/packet/drop_reason.h"
#include "dataplane/packet/offload.h"

namespace tunnelagent::dataplane {

// The header's bytes in front of each packet of a device with (`vnet_header`) or without
// offloads.
constexpr size_t VirtioNetHeaderBytes(bool vnet_header) {
  return vnet_header ? kVirtioNetHeaderLen : 0;
}

enum class VirtioRead {
  kPacket,       // one packet, its checksum finished if the host left it partial
  kSuperPacket,  // a TSO/USO super-packet of *segments packets (SegmentSuperPacket)
  kMalformed,    // *reason says why
};
// What the header read in front of `frame` says about the `len` bytes there.
VirtioRead ClassifyVirtioRead(const VirtioNetHeader& header, uint8_t* frame, size_t len,
                              size_t* segments, DropReason* reason);

// Writes an empty header (nothing to finish, no GSO) into the kVirtioNetHeaderLen bytes before
// `packet`, which must be room of the caller's, and returns where the write starts.
uint8_t* PrependEmptyVirtioNetHeader(uint8_t* packet);

}  // namespace tunnelagent::dataplane

#endif  // TUNNELAGENT_DATAPLANE_TUN_VIRTIO_NET_H_
