// CRC32C (Castagnoli), the checksum of every snapshot file.
//
// Why CRC32C: x86 has an instruction for it (SSE4.2 crc32), so the writer can checksum
// while it writes at memory speed, and the Python side verifies with the very same code
// through jitc_crc32c (cffi) instead of a slow pure-Python loop.
//
// The hardware path is compiled with a target attribute, not a global -msse4.2, so the
// library still loads on a CPU without SSE4.2; the choice is made once at runtime.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "jitc.h"
#include "snapshot/engine.h"

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace jitc::snapshot {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // reflected Castagnoli polynomial

// Slicing-by-8 tables for the software path (only used without SSE4.2).
struct Tables {
  uint32_t t[8][256];
  Tables() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
      t[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; ++i)
      for (int s = 1; s < 8; ++s) t[s][i] = (t[s - 1][i] >> 8) ^ t[0][t[s - 1][i] & 0xFF];
  }
};

const Tables& tables() {
  static const Tables tab;  // thread-safe static init; built on first software use only
  return tab;
}

uint32_t crc_sw(uint32_t crc, const unsigned char* p, size_t n) {
  const Tables& tb = tables();
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    crc = tb.t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    --n;
  }
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    w ^= crc;
    crc = tb.t[7][w & 0xFF] ^ tb.t[6][(w >> 8) & 0xFF] ^ tb.t[5][(w >> 16) & 0xFF] ^
          tb.t[4][(w >> 24) & 0xFF] ^ tb.t[3][(w >> 32) & 0xFF] ^ tb.t[2][(w >> 40) & 0xFF] ^
          tb.t[1][(w >> 48) & 0xFF] ^ tb.t[0][(w >> 56) & 0xFF];
    p += 8;
    n -= 8;
  }
  while (n--) crc = tb.t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crc_hw(uint32_t crc, const unsigned char* p,
                                                  size_t n) {
  uint64_t c = crc;
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
    --n;
  }
  // Three independent streams would hide the instruction's 3-cycle latency; one stream
  // already runs at several GB/s, well above disk bandwidth, so keep it simple.
  while (n >= 8) {
    uint64_t w;
    std::memcpy(&w, p, 8);
    c = _mm_crc32_u64(c, w);
    p += 8;
    n -= 8;
  }
  while (n--) c = _mm_crc32_u8(static_cast<uint32_t>(c), *p++);
  return static_cast<uint32_t>(c);
}

bool have_sse42() {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}
#endif

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
#if defined(__x86_64__)
  if (have_sse42()) return ~crc_hw(crc, p, n);
#endif
  return ~crc_sw(crc, p, n);
}

}  // namespace jitc::snapshot

extern "C" JITC_API uint32_t jitc_crc32c(uint32_t crc, const void* data, size_t n) {
  if (data == nullptr || n == 0) return crc;
  return jitc::snapshot::crc32c(crc, data, n);
}
