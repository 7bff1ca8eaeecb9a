// A small classic BPF interpreter and load-time checker for tests, so socket filters can be run
// on packets without a kernel or privileges. It follows Linux's semantics (net/core/filter.c):
// A, X and the verdict are 32-bit; a load beyond the packet, and a division or modulo by X = 0,
// end the run with 0 (drop); the checker rejects what bpf_check_classic and
// check_load_and_stores reject (unknown codes, jumps out of the program, constant division by
// zero, shifts of 32 or more, memory words beyond 16, a last instruction that is not a return,
// and a load of a memory word that some path has not stored). Ancillary loads (SKF_AD_OFF and
// the other negative offsets) are not supported and reported as errors.
#ifndef TUNNELAGENT_TESTS_DATAPLANE_PACKET_CBPF_INTERPRETER_H_
#define TUNNELAGENT_TESTS_DATAPLANE_PACKET_CBPF_INTERPRETER_H_

#include <linux/filter.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace tunnelagent::dataplane::test {

// Why the kernel would refuse the program at SO_ATTACH_FILTER, or "" when it would take it.
inline std::string CheckCbpf(const std::vector<sock_filter>& program) {
  const size_t len = program.size();
  if (len == 0 || len > BPF_MAXINSNS) return "length " + std::to_string(len);
  auto where = [](size_t pc) { return " at " + std::to_string(pc); };
  for (size_t pc = 0; pc < len; ++pc) {
    const sock_filter& f = program[pc];
    switch (f.code) {
      case BPF_ALU | BPF_ADD | BPF_K:
      case BPF_ALU | BPF_ADD | BPF_X:
      case BPF_ALU | BPF_SUB | BPF_K:
      case BPF_ALU | BPF_SUB | BPF_X:
      case BPF_ALU | BPF_MUL | BPF_K:
      case BPF_ALU | BPF_MUL | BPF_X:
      case BPF_ALU | BPF_DIV | BPF_X:
      case BPF_ALU | BPF_MOD | BPF_X:
      case BPF_ALU | BPF_AND | BPF_K:
      case BPF_ALU | BPF_AND | BPF_X:
      case BPF_ALU | BPF_OR | BPF_K:
      case BPF_ALU | BPF_OR | BPF_X:
      case BPF_ALU | BPF_XOR | BPF_K:
      case BPF_ALU | BPF_XOR | BPF_X:
      case BPF_ALU | BPF_LSH | BPF_X:
      case BPF_ALU | BPF_RSH | BPF_X:
      case BPF_ALU | BPF_NEG:
      case BPF_LD | BPF_W | BPF_IND:
      case BPF_LD | BPF_H | BPF_IND:
      case BPF_LD | BPF_B | BPF_IND:
      case BPF_LD | BPF_W | BPF_LEN:
      case BPF_LDX | BPF_W | BPF_LEN:
      case BPF_LDX | BPF_B | BPF_MSH:
      case BPF_LD | BPF_IMM:
      case BPF_LDX | BPF_IMM:
      case BPF_MISC | BPF_TAX:
      case BPF_MISC | BPF_TXA:
      case BPF_RET | BPF_K:
      case BPF_RET | BPF_A:
        break;
      case BPF_ALU | BPF_DIV | BPF_K:
      case BPF_ALU | BPF_MOD | BPF_K:
        if (f.k == 0) return "constant division by zero" + where(pc);
        break;
      case BPF_ALU | BPF_LSH | BPF_K:
      case BPF_ALU | BPF_RSH | BPF_K:
        if (f.k >= 32) return "shift by " + std::to_string(f.k) + where(pc);
        break;
      case BPF_LD | BPF_MEM:
      case BPF_LDX | BPF_MEM:
      case BPF_ST:
      case BPF_STX:
        if (f.k >= BPF_MEMWORDS) return "memory word " + std::to_string(f.k) + where(pc);
        break;
      case BPF_JMP | BPF_JA:
        if (f.k >= len - pc - 1) return "jump out of the program" + where(pc);
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
      case BPF_JMP | BPF_JEQ | BPF_X:
      case BPF_JMP | BPF_JGT | BPF_K:
      case BPF_JMP | BPF_JGT | BPF_X:
      case BPF_JMP | BPF_JGE | BPF_K:
      case BPF_JMP | BPF_JGE | BPF_X:
      case BPF_JMP | BPF_JSET | BPF_K:
      case BPF_JMP | BPF_JSET | BPF_X:
        if (pc + f.jt + 1 >= len || pc + f.jf + 1 >= len) {
          return "jump out of the program" + where(pc);
        }
        break;
      case BPF_LD | BPF_W | BPF_ABS:
      case BPF_LD | BPF_H | BPF_ABS:
      case BPF_LD | BPF_B | BPF_ABS:
        if (f.k >= static_cast<uint32_t>(SKF_AD_OFF)) return "ancillary load" + where(pc);
        break;
      default:
        return "unknown code " + std::to_string(f.code) + where(pc);
    }
  }
  const uint16_t last = program[len - 1].code;
  if (last != (BPF_RET | BPF_K) && last != (BPF_RET | BPF_A)) return "no return at the end";
  // check_load_and_stores: one valid bit per memory word, intersected at every jump target.
  std::vector<uint16_t> masks(len, 0xFFFF);
  uint16_t valid = 0;
  for (size_t pc = 0; pc < len; ++pc) {
    const sock_filter& f = program[pc];
    valid &= masks[pc];
    switch (f.code) {
      case BPF_ST:
      case BPF_STX:
        valid |= static_cast<uint16_t>(1u << f.k);
        break;
      case BPF_LD | BPF_MEM:
      case BPF_LDX | BPF_MEM:
        if ((valid & (1u << f.k)) == 0) {
          return "memory word " + std::to_string(f.k) + " loaded before stored" + where(pc);
        }
        break;
      case BPF_JMP | BPF_JA:
        masks[pc + 1 + f.k] &= valid;
        valid = 0xFFFF;
        break;
      case BPF_JMP | BPF_JEQ | BPF_K:
      case BPF_JMP | BPF_JEQ | BPF_X:
      case BPF_JMP | BPF_JGT | BPF_K:
      case BPF_JMP | BPF_JGT | BPF_X:
      case BPF_JMP | BPF_JGE | BPF_K:
      case BPF_JMP | BPF_JGE | BPF_X:
      case BPF_JMP | BPF_JSET | BPF_K:
      case BPF_JMP | BPF_JSET | BPF_X:
        masks[pc + 1 + f.jt] &= valid;
        masks[pc + 1 + f.jf] &= valid;
        valid = 0xFFFF;
        break;
      default:
        break;
    }
  }
  return "";
}

struct CbpfResult {
  uint32_t value = 0;            // what the program returned: bytes to keep, 0 = drop
  bool out_of_bounds = false;    // a load beyond the packet ended the run (value 0)
  bool divided_by_zero = false;  // a division or modulo by X = 0 ended the run (value 0)
  std::string error;             // something CheckCbpf would have refused, or unsupported
  size_t executed = 0;           // instructions run, the cost per packet
};

inline CbpfResult RunCbpf(const std::vector<sock_filter>& program, const uint8_t* packet,
                          size_t len) {
  CbpfResult r;
  // The kernel clears A and X before each run but not M[]: the checker makes every load of a
  // word follow a store, and a pattern here shows a program that relies on it otherwise.
  uint32_t a = 0;
  uint32_t x = 0;
  uint32_t mem[BPF_MEMWORDS];
  for (uint32_t& m : mem) m = 0xA5A5A5A5;
  // Loads at an offset the kernel would treat as ancillary (negative as an int) or beyond
  // the packet: the run ends with 0.
  auto load = [&](uint32_t offset, size_t size, uint32_t* out) {
    if (offset >= 0x80000000u) {
      r.error = "negative (ancillary) load offset";
      return false;
    }
    if (size_t{offset} + size > len) {
      r.out_of_bounds = true;
      return false;
    }
    uint32_t v = 0;
    for (size_t i = 0; i < size; ++i) v = (v << 8) | packet[offset + i];
    *out = v;
    return true;
  };
  auto size_of = [](uint16_t code) -> size_t {
    switch (BPF_SIZE(code)) {
      case BPF_W:
        return 4;
      case BPF_H:
        return 2;
      default:
        return 1;
    }
  };
  size_t pc = 0;
  while (true) {
    if (pc >= program.size()) {
      r.error = "ran off the end";
      return r;
    }
    const sock_filter& f = program[pc++];
    ++r.executed;
    const uint16_t code = f.code;
    switch (BPF_CLASS(code)) {
      case BPF_LD:
      case BPF_LDX: {
        uint32_t* dst = BPF_CLASS(code) == BPF_LD ? &a : &x;
        switch (BPF_MODE(code)) {
          case BPF_ABS:
          case BPF_IND: {
            if (BPF_CLASS(code) != BPF_LD) {
              r.error = "LDX with ABS/IND";
              return r;
            }
            const uint32_t offset = BPF_MODE(code) == BPF_ABS ? f.k : x + f.k;
            if (!load(offset, size_of(code), dst)) return r;
            break;
          }
          case BPF_LEN:
            *dst = static_cast<uint32_t>(len);
            break;
          case BPF_IMM:
            *dst = f.k;
            break;
          case BPF_MEM:
            if (f.k >= BPF_MEMWORDS) {
              r.error = "memory word out of range";
              return r;
            }
            *dst = mem[f.k];
            break;
          case BPF_MSH: {
            uint32_t byte = 0;
            if (BPF_CLASS(code) != BPF_LDX || !load(f.k, 1, &byte)) {
              if (r.error.empty() && !r.out_of_bounds) r.error = "LD with MSH";
              return r;
            }
            x = 4 * (byte & 0xF);
            break;
          }
          default:
            r.error = "unknown load mode";
            return r;
        }
        break;
      }
      case BPF_ST:
      case BPF_STX:
        if (f.k >= BPF_MEMWORDS) {
          r.error = "memory word out of range";
          return r;
        }
        mem[f.k] = BPF_CLASS(code) == BPF_ST ? a : x;
        break;
      case BPF_ALU: {
        const uint32_t operand = BPF_SRC(code) == BPF_X ? x : f.k;
        switch (BPF_OP(code)) {
          case BPF_ADD:
            a += operand;
            break;
          case BPF_SUB:
            a -= operand;
            break;
          case BPF_MUL:
            a *= operand;
            break;
          case BPF_DIV:
          case BPF_MOD:
            if (operand == 0) {
              r.divided_by_zero = true;
              return r;
            }
            a = BPF_OP(code) == BPF_DIV ? a / operand : a % operand;
            break;
          case BPF_AND:
            a &= operand;
            break;
          case BPF_OR:
            a |= operand;
            break;
          case BPF_XOR:
            a ^= operand;
            break;
          // Constant shifts of 32 or more are refused at load; by X the eBPF interpreter
          // masks the count to 5 bits, as x86 does.
          case BPF_LSH:
            a <<= (operand & 31);
            break;
          case BPF_RSH:
            a >>= (operand & 31);
            break;
          case BPF_NEG:
            a = 0u - a;
            break;
          default:
            r.error = "unknown ALU op";
            return r;
        }
        break;
      }
      case BPF_JMP: {
        if (BPF_OP(code) == BPF_JA) {
          pc += f.k;
          break;
        }
        const uint32_t operand = BPF_SRC(code) == BPF_X ? x : f.k;
        bool taken = false;
        switch (BPF_OP(code)) {
          case BPF_JEQ:
            taken = a == operand;
            break;
          case BPF_JGT:
            taken = a > operand;
            break;
          case BPF_JGE:
            taken = a >= operand;
            break;
          case BPF_JSET:
            taken = (a & operand) != 0;
            break;
          default:
            r.error = "unknown jump";
            return r;
        }
        pc += taken ? f.jt : f.jf;
        break;
      }
      case BPF_RET:
        r.value = BPF_RVAL(code) == BPF_A ? a : f.k;
        return r;
      case BPF_MISC:
        if (BPF_MISCOP(code) == BPF_TAX) {
          x = a;
        } else if (BPF_MISCOP(code) == BPF_TXA) {
          a = x;
        } else {
          r.error = "unknown misc op";
          return r;
        }
        break;
      default:
        r.error = "unknown class";
        return r;
    }
  }
}

}  // namespace tunnelagent::dataplane::test

#endif  // TUNNELAGENT_TESTS_DATAPLANE_PACKET_CBPF_INTERPRETER_H_
