// Exhaustive-ish check of assign_stripes (compiled and run by tests/snapshot/test_stripes.py).
// Properties: every element of every tensor in exactly one stripe, in order; whole tensors
// keep their name and pieces are "<name>@<start>:<end>"; deterministic; each stripe within
// one element size of its ideal share; same-dtype registries: stripes differ by <= 1 element.
// Prints "OK <cases>" and exits 0, or prints the first failure and exits 1.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "snapshot/engine.h"

using jitc::snapshot::Chunk;
using jitc::snapshot::Entry;

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(uint64_t n) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state % n;
}

#define CHECK(cond, ...)                                  \
  do {                                                    \
    if (!(cond)) {                                        \
      std::printf("FAIL case %d k=%d: ", kase, k);        \
      std::printf(__VA_ARGS__);                           \
      std::printf("  [%s]\n", #cond);                     \
      return 1;                                           \
    }                                                     \
  } while (0)

int main() {
  const char* dts[] = {"U8", "BF16", "F32", "F64"};
  const uint64_t dsz[] = {1, 2, 4, 8};
  int cases = 0;
  for (int kase = 0; kase < 4000; ++kase) {
    const bool uniform = kase % 3 == 0;
    const int nt = static_cast<int>(rnd(7));  // 0..6 tensors
    const int d0 = static_cast<int>(rnd(4));
    std::vector<Entry> es;
    for (int t = 0; t < nt; ++t) {
      Entry e;
      e.name = "t" + std::to_string(t);
      const int d = uniform ? d0 : static_cast<int>(rnd(4));
      e.dtype = dts[d];
      const int shape_kind = static_cast<int>(rnd(5));
      if (shape_kind == 0) e.shape = {};                       // 0-d
      else if (shape_kind == 1) e.shape = {static_cast<int64_t>(rnd(3)), 3};  // maybe empty
      else e.shape = {static_cast<int64_t>(1 + rnd(40))};
      uint64_t n = 1;
      for (auto s : e.shape) n *= static_cast<uint64_t>(s);
      e.nbytes = n * dsz[d];
      e.ptr = reinterpret_cast<const void*>(0x1000);
      es.push_back(e);
    }
    uint64_t total = 0, max_es = 1;
    for (auto& e : es) {
      total += e.nbytes;
      for (int d = 0; d < 4; ++d)
        if (e.dtype == dts[d] && dsz[d] > max_es) max_es = dsz[d];
    }
    for (int k = 1; k <= 9; ++k) {
      ++cases;
      auto a = jitc::snapshot::assign_stripes(es, k);
      auto b = jitc::snapshot::assign_stripes(es, k);
      CHECK(a.size() == static_cast<size_t>(k), "size %zu", a.size());
      // determinism
      for (int j = 0; j < k; ++j) {
        CHECK(a[j].size() == b[j].size(), "nondeterministic");
        for (size_t i = 0; i < a[j].size(); ++i)
          CHECK(a[j][i].key == b[j][i].key && a[j][i].start == b[j][i].start, "nondet");
      }
      // coverage: walk stripes in order; chunks of each tensor must be contiguous, in order
      std::vector<uint64_t> next(es.size(), 0);
      std::vector<int> seen(es.size(), 0);
      uint64_t min_sz = ~0ull, max_sz = 0;
      for (int j = 0; j < k; ++j) {
        uint64_t sz = 0;
        size_t last_index = 0;
        for (size_t i = 0; i < a[j].size(); ++i) {
          const Chunk& c = a[j][i];
          CHECK(c.index < es.size(), "index");
          CHECK(i == 0 || c.index > last_index, "order within stripe");
          last_index = c.index;
          const Entry& e = es[c.index];
          uint64_t n = 1;
          for (auto s : e.shape) n *= static_cast<uint64_t>(s);
          CHECK(c.start == next[c.index], "gap/overlap in %s: start %llu want %llu",
                e.name.c_str(), (unsigned long long)c.start, (unsigned long long)next[c.index]);
          CHECK(c.end > c.start || n == 0, "empty piece of %s", e.name.c_str());
          CHECK(c.end <= n, "past end");
          const bool whole = c.start == 0 && c.end == n;
          const std::string want = whole ? e.name
              : e.name + "@" + std::to_string(c.start) + ":" + std::to_string(c.end);
          CHECK(c.key == want, "key %s want %s", c.key.c_str(), want.c_str());
          next[c.index] = c.end;
          ++seen[c.index];
          sz += (c.end - c.start) * (e.nbytes / (n ? n : 1));
        }
        const uint64_t lo = total * j / k, hi = total * (j + 1) / k;
        const uint64_t ideal = hi - lo;
        const uint64_t diff = sz > ideal ? sz - ideal : ideal - sz;
        CHECK(diff < max_es || diff == 0, "stripe %d has %llu bytes, ideal %llu", j,
              (unsigned long long)sz, (unsigned long long)ideal);
        if (sz < min_sz) min_sz = sz;
        if (sz > max_sz) max_sz = sz;
      }
      for (size_t t = 0; t < es.size(); ++t) {
        uint64_t n = 1;
        for (auto s : es[t].shape) n *= static_cast<uint64_t>(s);
        CHECK(next[t] == n, "tensor %zu not fully covered", t);
        CHECK(seen[t] >= 1, "tensor %zu in no stripe", t);
        if (n == 0) CHECK(seen[t] == 1, "empty tensor %zu placed %d times", t, seen[t]);
      }
      if (uniform && nt > 0)
        CHECK(max_sz - min_sz <= dsz[d0], "uniform: stripes %llu..%llu",
              (unsigned long long)min_sz, (unsigned long long)max_sz);
    }
  }
  std::printf("OK %d\n", cases);
  return 0;
}
