// Request ids of mutating calls (AIP-155): one random UUID per call (tunnelctl: per invocation),
// so that a retry of the same call (on UNAVAILABLE, or after a timeout) has no second effect.
#ifndef TUNNELAGENT_CLIENTS_COMMON_REQUEST_ID_H_
#define TUNNELAGENT_CLIENTS_COMMON_REQUEST_ID_H_

#include <array>
#include <cstdint>
#include <string>

namespace tunnelagent::clients {

// The RFC 4122 version 4 UUID made of `random` (the version and variant bits are set here):
// 36 lowercase characters, "xxxxxxxx-xxxx-4xxx-[89ab]xxx-xxxxxxxxxxxx".
std::string FormatUuidV4(std::array<uint8_t, 16> random);

// A new random UUIDv4 (from std::random_device).
std::string NewRequestId();

}  // namespace tunnelagent::clients

#endif  // TUNNELAGENT_CLIENTS_COMMON_REQUEST_ID_H_
