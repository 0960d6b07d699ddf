// The snapshot engine: the registry of state tensors and the GIL-free stripe writer.
// Called from the C API (registry, periodic/shim-only writes) and from the agent thread
// (supervisor SNAPSHOT commands). Never touches Python.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace jitc::snapshot {

struct Entry {
  std::string name;
  const void* ptr = nullptr;
  uint64_t nbytes = 0;
  std::string dtype;            // safetensors dtype string: "F32", "BF16", "I64", "U8", ...
  std::vector<int64_t> shape;
  int device = -1;              // -1 CPU, >= 0 CUDA device
};

// One piece of one stripe: elements [start, end) of entry `index` (whole tensor if it fits).
struct Chunk {
  size_t index;
  uint64_t start, end;          // element range
  std::string key;              // name in the stripe file: "<name>" or "<name>@<start>:<end>"
};

// Pure function of the registry: which chunks stripe j of k holds. Same result on every
// replica that registered the same tensors (see docs/internals.md).
std::vector<std::vector<Chunk>> assign_stripes(const std::vector<Entry>& entries, int k);

// Registry (thread-safe). begin/add/commit build a new generation and swap it in; a
// snapshot in progress keeps reading the generation it started with.
void registry_begin();
bool registry_add(Entry e, std::string* why);
void registry_commit();
// Small replicated state blob, stored as a U8 tensor named "__jitc_meta__".
void set_meta(const void* data, size_t n);
// Fingerprint of the committed registry (names, dtypes, shapes), hex; "" if none.
std::string fingerprint();
uint64_t registered_bytes();

struct StripeResult {
  int stripe = -1;
  bool ok = false;
  std::string file;             // path written
  uint64_t bytes = 0;
  uint32_t crc32c = 0;
  std::string error;
};

// A file stem the caller may give (jitc/snapshot/layout.py is_plain_name, MAX_STEM): one
// path component, not empty, at most kMaxStemBytes, no "..".
inline constexpr size_t kMaxStemBytes = 128;
bool plain_name(const std::string& name);

// Write the given stripes (of nstripes) for the committed registry into dir: stripes[i] to
// "<dir>/<stems[i]>.safetensors" via a temporary name, fsync, rename, then the
// "<dir>/<stems[i]>.done" record; stripes written in parallel (up to 4 threads). The stems
// are the caller's (jitc/snapshot/layout.py names files, the engine never does); a stem
// that is not plain_name, or given twice, fails every stripe. The caller (core)
// guarantees the optimizer window is closed for the duration (invariant I1).
std::vector<StripeResult> write_stripes(const std::string& dir, int nstripes,
                                        const std::vector<int>& stripes,
                                        const std::vector<std::string>& stems, int64_t step,
                                        double timeout_s);

// The caller's host tensors (not the registry) and meta blob as stripe 0 of 1 of `step`
// in the existing directory dir, "<dir>/<stem>.safetensors" and ".done" (a plain_name),
// written by write_stripes' code on the calling thread; no thread is started.
// check_tensors applies the registry's rules (and host memory).
// WARNING: the tensors are read in place; keep them alive and unchanged until it returns.
bool check_tensors(const std::vector<Entry>& entries, std::string* why);
bool write_tensors(const std::string& dir, const std::string& stem, std::vector<Entry> entries,
                   std::string meta, int64_t step, double timeout_s, std::string* why);

// CRC32C (Castagnoli), incremental: crc = crc32c(crc, data, n), start with 0.
uint32_t crc32c(uint32_t crc, const void* data, size_t n);

}  // namespace jitc::snapshot
