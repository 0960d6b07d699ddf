// Stripe assignment: which bytes of the registered state each replica writes.
//
// It must be a pure function of the registry, because every healthy replica computes it
// on its own and the union of what they write has to be exactly the state, each byte
// once. We lay the tensors end to end in registration order (one byte stream), cut the
// stream at the ideal boundaries floor(total*(j+1)/k), and give each *element* to the
// stripe in which its first byte lies. A tensor cut by a boundary becomes 1-D pieces
// "<name>@<start>:<end>". Every stripe is then within one element size of total/k.
#include <string>
#include <vector>

#include "snapshot/engine.h"
#include "snapshot/internal.h"

namespace jitc::snapshot {

size_t dtype_size(const std::string& d) {
  if (d == "F64" || d == "I64" || d == "U64") return 8;
  if (d == "F32" || d == "I32" || d == "U32") return 4;
  if (d == "F16" || d == "BF16" || d == "I16" || d == "U16") return 2;
  if (d == "U8" || d == "I8" || d == "BOOL" || d == "F8_E4M3" || d == "F8_E5M2") return 1;
  return 0;
}

uint64_t numel(const std::vector<int64_t>& shape) {
  uint64_t n = 1;
  for (int64_t s : shape) n *= static_cast<uint64_t>(s);
  return n;
}

namespace {

// Ideal end (exclusive) of stripe j in the byte stream; 128-bit to avoid overflow.
uint64_t ideal_end(uint64_t total, int j, int k) {
  return static_cast<uint64_t>(static_cast<unsigned __int128>(total) * (j + 1) / k);
}

// First element index whose start byte (off + i*es) is >= b, clamped to [0, n].
uint64_t first_at_or_after(uint64_t off, uint64_t es, uint64_t n, uint64_t b) {
  if (b <= off) return 0;
  uint64_t i = (b - off + es - 1) / es;
  return i < n ? i : n;
}

std::string piece_key(const std::string& name, uint64_t s, uint64_t e) {
  return name + "@" + std::to_string(s) + ":" + std::to_string(e);
}

}  // namespace

std::vector<std::vector<Chunk>> assign_stripes(const std::vector<Entry>& entries, int k) {
  if (k < 1) return {};
  std::vector<std::vector<Chunk>> out(static_cast<size_t>(k));
  uint64_t total = 0;
  for (const Entry& e : entries) total += e.nbytes;

  uint64_t off = 0;
  for (size_t idx = 0; idx < entries.size(); ++idx) {
    const Entry& e = entries[idx];
    const uint64_t n = numel(e.shape);
    if (e.nbytes == 0 || n == 0) {
      // An empty tensor still needs a home: the stripe whose range holds its offset.
      int j = 0;
      while (j < k - 1 && off >= ideal_end(total, j, k)) ++j;
      out[static_cast<size_t>(j)].push_back(Chunk{idx, 0, n, e.name});
      continue;
    }
    const uint64_t es = e.nbytes / n;
    for (int j = 0; j < k; ++j) {
      const uint64_t lo = j == 0 ? 0 : first_at_or_after(off, es, n, ideal_end(total, j - 1, k));
      const uint64_t hi = j == k - 1 ? n : first_at_or_after(off, es, n, ideal_end(total, j, k));
      if (hi <= lo) continue;
      const bool whole = lo == 0 && hi == n;
      out[static_cast<size_t>(j)].push_back(
          Chunk{idx, lo, hi, whole ? e.name : piece_key(e.name, lo, hi)});
    }
    off += e.nbytes;
  }
  return out;
}

}  // namespace jitc::snapshot
