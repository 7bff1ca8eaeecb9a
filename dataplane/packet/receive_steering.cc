#include "dataplane/packet/receive_steering.h"

#include <cassert>
#include <utility>

#include "dataplane/packet/byte_order.h"
#include "dataplane/packet/gre.h"
#include "dataplane/packet/ipv4.h"

namespace tunnelagent::dataplane {
namespace {

// GRE flag bits as they appear in the first byte, the one the program loads.
constexpr uint8_t kGreByteChecksum = kGreFlagChecksum >> 8;
constexpr uint8_t kGreByteKey = kGreFlagKey >> 8;
constexpr uint8_t kGreByteSequence = kGreFlagSequence >> 8;
constexpr uint8_t kGreVersionBits = kGreVersionMask;

constexpr size_t kEthernetHeaderLen = 14;
constexpr size_t kEthernetTypeOffset = 12;
constexpr size_t kPortsLen = 4;
constexpr uint16_t kIpv4FragmentMask = 0x3FFF;  // MF and the fragment offset

constexpr uint8_t kProtoTcp = 6;
constexpr uint8_t kProtoUdp = 17;
constexpr uint8_t kProtoSctp = 132;

// The fold: h ^= h >> 16 brings the high half (e.g. the source port) down, then Knuth's
// multiplicative hash (2^32 / golden ratio, odd) takes the product's high 16 bits, which depend
// on every bit of the folded low half, non-linearly through the carries. XOR folds alone
// (h ^= h >> 16; h ^= h >> 8) are linear: h % 2 is then the parity of bits 0, 8, 16 and 24,
// and flows whose ports differ only elsewhere, such as the even ports Linux's connect() takes
// one after another, all land on one worker.
constexpr uint32_t kMultiplier = 0x9E3779B1;

// sk_filter trims the packet to the returned length: the largest keeps it whole.
constexpr uint32_t kAcceptWhole = 0xFFFFFFFF;

bool Present(size_t len, size_t offset, size_t n) { return offset <= len && len - offset >= n; }

bool HasPorts(uint8_t protocol) {
  return protocol == kProtoTcp || protocol == kProtoUdp || protocol == kProtoSctp;
}

uint32_t Fold(uint32_t h) {
  h ^= h >> 16;
  return (h * kMultiplier) >> 16;
}

// The C++ twins of the program's blocks below: false where the program jumps to "worker 0".
bool HashInnerIpv4(const uint8_t* data, size_t len, size_t t, uint32_t* h) {
  if (!Present(len, t, kIpv4HeaderLen) || (data[t] >> 4) != 4) return false;
  *h ^= LoadBe32(data + t + 12) ^ LoadBe32(data + t + 16);
  if (!HasPorts(data[t + 9]) || (LoadBe16(data + t + 6) & kIpv4FragmentMask) != 0) return true;
  const size_t ports = t + size_t{data[t] & 0x0Fu} * 4;
  if (Present(len, ports, kPortsLen)) *h ^= LoadBe32(data + ports);
  return true;
}

bool HashInnerIpv6(const uint8_t* data, size_t len, size_t t, uint32_t* h) {
  if (!Present(len, t, kIpv6HeaderLen) || (data[t] >> 4) != 6) return false;
  *h ^= LoadBe32(data + t + 20) ^ LoadBe32(data + t + 36);
  if (HasPorts(data[t + 6]) && Present(len, t + kIpv6HeaderLen, kPortsLen)) {
    *h ^= LoadBe32(data + t + kIpv6HeaderLen);
  }
  return true;
}

bool HashGre(const uint8_t* data, size_t len, size_t p, uint32_t* h) {
  if (!Present(len, p, kGreBaseHeaderLen)) return false;
  const uint8_t flags = data[p];
  if ((flags & kGreByteSequence) != 0 || (data[p + 1] & kGreVersionBits) != 0) return false;
  const uint16_t type = LoadBe16(data + p + 2);
  size_t x = p + kGreBaseHeaderLen;
  if ((flags & kGreByteChecksum) != 0) x += 4;
  if ((flags & kGreByteKey) != 0) {
    if (!Present(len, x, 4)) return false;
    *h ^= LoadBe32(data + x);
    x += 4;
  }
  if (type == kEtherTypeIpv4) return HashInnerIpv4(data, len, x, h);
  if (type == kEtherTypeIpv6) return HashInnerIpv6(data, len, x, h);
  if (type != kEtherTypeTransparentBridging || !Present(len, x, kEthernetHeaderLen)) return false;
  const uint16_t ethertype = LoadBe16(data + x + kEthernetTypeOffset);
  x += kEthernetHeaderLen;
  if (ethertype == kEtherTypeIpv4) return HashInnerIpv4(data, len, x, h);
  if (ethertype == kEtherTypeIpv6) return HashInnerIpv6(data, len, x, h);
  return false;
}

// Scratch memory words (M[]); the kernel rejects a program that may load one before storing it.
constexpr uint32_t kMemHash = 0;
constexpr uint32_t kMemBase = 1;   // offset of the inner IP header, while X holds other things
constexpr uint32_t kMemTemp = 2;   // a word being combined
constexpr uint32_t kMemFlags = 3;  // GRE's first byte
constexpr uint32_t kMemType = 4;   // GRE protocol type, then the Ethernet type

// Classic BPF jumps only forward, by 8-bit offsets (conditional) or 32-bit ones (BPF_JA):
// blocks are laid out in the order they jump, and labels are resolved when the program ends.
class Assembler {
 public:
  static constexpr int kNext = -1;  // fall through

  int NewLabel() {
    labels_.push_back(-1);
    return static_cast<int>(labels_.size() - 1);
  }
  void Bind(int label) { labels_[label] = static_cast<int>(code_.size()); }

  void Stmt(uint16_t code, uint32_t k = 0) { code_.push_back(BPF_STMT(code, k)); }
  // BPF_JMP | `op` | BPF_K or BPF_X, to label `jt` when true, `jf` when false.
  void Jump(uint16_t op, uint32_t k, int jt, int jf) {
    fixups_.push_back({code_.size(), jt, jf});
    code_.push_back(BPF_JUMP(BPF_JMP | op, k, 0, 0));
  }
  void Goto(int label) {
    fixups_.push_back({code_.size(), label, kNext});
    code_.push_back(BPF_STMT(BPF_JMP | BPF_JA, 0));
  }

  std::vector<sock_filter> Finish() {
    for (const Fixup& f : fixups_) {
      sock_filter& insn = code_[f.at];
      if (BPF_OP(insn.code) == BPF_JA) {
        insn.k = Offset(f.at, f.jt);
      } else {
        insn.jt = static_cast<uint8_t>(Offset(f.at, f.jt));
        insn.jf = static_cast<uint8_t>(Offset(f.at, f.jf));
      }
    }
    return std::move(code_);
  }

 private:
  struct Fixup {
    size_t at;
    int jt;
    int jf;
  };
  uint32_t Offset(size_t at, int label) const {
    if (label == kNext) return 0;
    const int target = labels_[label];
    // A backward, unbound or too long jump is a bug in the layout below, the same for every
    // worker count: the tests check every socket and protocol through the kernel's rules.
    assert(target > static_cast<int>(at) && target - static_cast<int>(at) - 1 <= 255);
    return static_cast<uint32_t>(target - static_cast<int>(at) - 1);
  }

  std::vector<sock_filter> code_;
  std::vector<int> labels_;
  std::vector<Fixup> fixups_;
};

constexpr int kNext = Assembler::kNext;

// Goes to `fail` unless `n` bytes from offset X lie within the packet. len - X alone would wrap
// when X is already beyond the end, hence the first comparison, which `x_in_packet` (X <= len
// is known) saves.
void RequireBytes(Assembler& a, uint32_t n, int fail, bool x_in_packet = false) {
  a.Stmt(BPF_LD | BPF_W | BPF_LEN);
  if (!x_in_packet) a.Jump(BPF_JGE | BPF_X, 0, kNext, fail);
  a.Stmt(BPF_ALU | BPF_SUB | BPF_X);
  a.Jump(BPF_JGE | BPF_K, n, kNext, fail);
}

// X += n.
void AdvanceX(Assembler& a, uint32_t n) {
  a.Stmt(BPF_MISC | BPF_TXA);
  a.Stmt(BPF_ALU | BPF_ADD | BPF_K, n);
  a.Stmt(BPF_MISC | BPF_TAX);
}

// M[hash] ^= A; X is lost.
void MixA(Assembler& a) {
  a.Stmt(BPF_LDX | BPF_MEM, kMemHash);
  a.Stmt(BPF_ALU | BPF_XOR | BPF_X);
  a.Stmt(BPF_ST, kMemHash);
}

// Goes to `ports` when the transport protocol in A carries ports, else to `skip`.
void JumpIfPorts(Assembler& a, int ports, int skip) {
  a.Jump(BPF_JEQ | BPF_K, kProtoTcp, ports, kNext);
  a.Jump(BPF_JEQ | BPF_K, kProtoUdp, ports, kNext);
  a.Jump(BPF_JEQ | BPF_K, kProtoSctp, ports, skip);
}

// GRE at X (P); goes on to `ipv4` or `ipv6` with X at the inner header.
void EmitGre(Assembler& a, bool at_start, int zero, int ipv4, int ipv6) {
  RequireBytes(a, kGreBaseHeaderLen, zero, /*x_in_packet=*/at_start);
  a.Stmt(BPF_LD | BPF_B | BPF_IND, 0);
  a.Jump(BPF_JSET | BPF_K, kGreByteSequence, zero, kNext);
  a.Stmt(BPF_ST, kMemFlags);
  a.Stmt(BPF_LD | BPF_B | BPF_IND, 1);
  a.Jump(BPF_JSET | BPF_K, kGreVersionBits, zero, kNext);
  a.Stmt(BPF_LD | BPF_H | BPF_IND, 2);
  a.Stmt(BPF_ST, kMemType);
  AdvanceX(a, kGreBaseHeaderLen);

  const int no_checksum = a.NewLabel();
  a.Stmt(BPF_LD | BPF_MEM, kMemFlags);
  a.Jump(BPF_JSET | BPF_K, kGreByteChecksum, kNext, no_checksum);
  AdvanceX(a, 4);
  a.Bind(no_checksum);

  const int no_key = a.NewLabel();
  a.Stmt(BPF_LD | BPF_MEM, kMemFlags);
  a.Jump(BPF_JSET | BPF_K, kGreByteKey, kNext, no_key);
  RequireBytes(a, 4, zero);
  a.Stmt(BPF_LD | BPF_W | BPF_IND, 0);
  a.Stmt(BPF_ST, kMemHash);  // the first thing hashed: nothing to mix it with yet
  AdvanceX(a, 4);
  a.Bind(no_key);

  a.Stmt(BPF_LD | BPF_MEM, kMemType);
  a.Jump(BPF_JEQ | BPF_K, kEtherTypeIpv4, ipv4, kNext);
  a.Jump(BPF_JEQ | BPF_K, kEtherTypeIpv6, ipv6, kNext);
  a.Jump(BPF_JEQ | BPF_K, kEtherTypeTransparentBridging, kNext, zero);

  RequireBytes(a, kEthernetHeaderLen, zero);
  a.Stmt(BPF_LD | BPF_H | BPF_IND, kEthernetTypeOffset);
  a.Stmt(BPF_ST, kMemType);
  AdvanceX(a, kEthernetHeaderLen);
  a.Stmt(BPF_LD | BPF_MEM, kMemType);
  a.Jump(BPF_JEQ | BPF_K, kEtherTypeIpv4, ipv4, kNext);
  a.Jump(BPF_JEQ | BPF_K, kEtherTypeIpv6, ipv6, zero);
}

// Inner IPv4 at X.
void EmitInnerIpv4(Assembler& a, int zero, int fold) {
  RequireBytes(a, kIpv4HeaderLen, zero);
  a.Stmt(BPF_LD | BPF_B | BPF_IND, 0);
  a.Stmt(BPF_ALU | BPF_AND | BPF_K, 0xF0);
  a.Jump(BPF_JEQ | BPF_K, 0x40, kNext, zero);
  a.Stmt(BPF_STX, kMemBase);
  a.Stmt(BPF_LD | BPF_W | BPF_IND, 12);
  a.Stmt(BPF_ST, kMemTemp);
  a.Stmt(BPF_LD | BPF_W | BPF_IND, 16);
  a.Stmt(BPF_LDX | BPF_MEM, kMemTemp);
  a.Stmt(BPF_ALU | BPF_XOR | BPF_X);
  MixA(a);
  a.Stmt(BPF_LDX | BPF_MEM, kMemBase);

  const int ports = a.NewLabel();
  a.Stmt(BPF_LD | BPF_B | BPF_IND, 9);
  JumpIfPorts(a, ports, fold);
  a.Bind(ports);
  a.Stmt(BPF_LD | BPF_H | BPF_IND, 6);
  a.Jump(BPF_JSET | BPF_K, kIpv4FragmentMask, fold, kNext);
  a.Stmt(BPF_LD | BPF_B | BPF_IND, 0);
  a.Stmt(BPF_ALU | BPF_AND | BPF_K, 0x0F);
  a.Stmt(BPF_ALU | BPF_LSH | BPF_K, 2);
  a.Stmt(BPF_ALU | BPF_ADD | BPF_X);
  a.Stmt(BPF_MISC | BPF_TAX);
  RequireBytes(a, kPortsLen, fold);
  a.Stmt(BPF_LD | BPF_W | BPF_IND, 0);
  MixA(a);
}

// Inner IPv6 at X.
void EmitInnerIpv6(Assembler& a, int zero, int fold) {
  RequireBytes(a, kIpv6HeaderLen, zero);
  a.Stmt(BPF_LD | BPF_B | BPF_IND, 0);
  a.Stmt(BPF_ALU | BPF_AND | BPF_K, 0xF0);
  a.Jump(BPF_JEQ | BPF_K, 0x60, kNext, zero);
  a.Stmt(BPF_STX, kMemBase);
  a.Stmt(BPF_LD | BPF_W | BPF_IND, 20);
  a.Stmt(BPF_ST, kMemTemp);
  a.Stmt(BPF_LDX | BPF_MEM, kMemBase);
  a.Stmt(BPF_LD | BPF_W | BPF_IND, 36);
  a.Stmt(BPF_LDX | BPF_MEM, kMemTemp);
  a.Stmt(BPF_ALU | BPF_XOR | BPF_X);
  MixA(a);
  a.Stmt(BPF_LDX | BPF_MEM, kMemBase);

  const int ports = a.NewLabel();
  a.Stmt(BPF_LD | BPF_B | BPF_IND, 6);
  JumpIfPorts(a, ports, fold);
  a.Bind(ports);
  RequireBytes(a, kIpv6HeaderLen + kPortsLen, fold, /*x_in_packet=*/true);
  a.Stmt(BPF_LD | BPF_W | BPF_IND, kIpv6HeaderLen);
  MixA(a);
}

}  // namespace

unsigned SteeringWorker(SteeringSocket socket, uint8_t protocol, const uint8_t* data, size_t len,
                        unsigned workers) {
  if (workers <= 1) return 0;
  size_t p = 0;
  if (socket == SteeringSocket::kIpv4) {
    if (len == 0) return 0;
    p = size_t{data[0] & 0x0Fu} * 4;
  }
  uint32_t h = 0;
  bool parsed = false;
  switch (protocol) {
    case kIpProtoGre:
      parsed = HashGre(data, len, p, &h);
      break;
    case kIpProtoIpip:
      parsed = HashInnerIpv4(data, len, p, &h);
      break;
    case kIpProtoIpv6:
      parsed = HashInnerIpv6(data, len, p, &h);
      break;
    default:
      break;
  }
  return parsed ? Fold(h) % workers : 0;
}

std::vector<sock_filter> SteeringProgram(SteeringSocket socket, uint8_t protocol, unsigned worker,
                                         unsigned workers) {
  const bool known =
      protocol == kIpProtoGre || protocol == kIpProtoIpip || protocol == kIpProtoIpv6;
  if (workers <= 1 || !known || worker >= workers) {
    const bool keeps = worker == 0 && (workers <= 1 || !known);
    return {BPF_STMT(BPF_RET | BPF_K, keeps ? kAcceptWhole : 0)};
  }
  Assembler a;
  const int accept = a.NewLabel();
  const int drop = a.NewLabel();
  const int zero = worker == 0 ? accept : drop;
  const int ipv4 = a.NewLabel();
  const int ipv6 = a.NewLabel();
  const int fold = a.NewLabel();

  // The kernel clears A and X before every run: this is h = 0, and on an IPv6 socket X is
  // already P.
  a.Stmt(BPF_ST, kMemHash);
  if (socket == SteeringSocket::kIpv4) {
    a.Stmt(BPF_LD | BPF_W | BPF_LEN);
    a.Jump(BPF_JEQ | BPF_K, 0, zero, kNext);
    a.Stmt(BPF_LDX | BPF_B | BPF_MSH, 0);
  }
  if (protocol == kIpProtoGre) EmitGre(a, socket == SteeringSocket::kIpv6, zero, ipv4, ipv6);
  if (protocol != kIpProtoIpv6) {
    a.Bind(ipv4);
    EmitInnerIpv4(a, zero, fold);
    if (protocol == kIpProtoGre) a.Goto(fold);
  }
  if (protocol != kIpProtoIpip) {
    a.Bind(ipv6);
    EmitInnerIpv6(a, zero, fold);
  }

  a.Bind(fold);
  a.Stmt(BPF_LD | BPF_MEM, kMemHash);
  a.Stmt(BPF_MISC | BPF_TAX);
  a.Stmt(BPF_ALU | BPF_RSH | BPF_K, 16);
  a.Stmt(BPF_ALU | BPF_XOR | BPF_X);
  a.Stmt(BPF_ALU | BPF_MUL | BPF_K, kMultiplier);
  a.Stmt(BPF_ALU | BPF_RSH | BPF_K, 16);
  a.Stmt(BPF_ALU | BPF_MOD | BPF_K, workers);
  a.Jump(BPF_JEQ | BPF_K, worker, accept, drop);
  a.Bind(accept);
  a.Stmt(BPF_RET | BPF_K, kAcceptWhole);
  a.Bind(drop);
  a.Stmt(BPF_RET | BPF_K, 0);
  return a.Finish();
}

}  // namespace tunnelagent::dataplane
