// Private helpers shared by the snapshot engine's sources (not part of engine.h).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "snapshot/engine.h"

namespace jitc::snapshot {

// Name under which the small replicated state blob (set_meta) is stored in every stripe.
inline constexpr const char* kMetaKey = "__jitc_meta__";
// Format tag, also in each stripe's __metadata__ and in the manifest.
inline constexpr const char* kFormat = "jitc-snapshot/1";

// Bytes per element of a safetensors dtype string; 0 if unknown.
size_t dtype_size(const std::string& dtype);
// Number of elements of a shape (1 for a 0-d tensor).
uint64_t numel(const std::vector<int64_t>& shape);

// One committed registry generation plus the meta blob current when it was taken. A
// snapshot holds this by shared_ptr, so a concurrent commit cannot free what it reads.
struct Generation {
  std::vector<Entry> entries;
  std::string fingerprint;
};
struct View {
  std::shared_ptr<const Generation> gen;     // null if nothing was ever committed
  std::shared_ptr<const std::string> meta;   // never null (empty blob if never set)
};
View current_view();

// registry.cpp: the registry's rules for one entry (false with the reason) and the
// fingerprint of a list of entries, for every writer of the format.
bool check_entry(const Entry& e, std::string* msg);
std::string compute_fingerprint(const std::vector<Entry>& entries);

// writer.cpp: write stripe j of k (`chunks` of view's generation) into the existing
// directory dir on the calling thread, the engine's way: header and pieces to a temporary,
// fsync, rename, the ".done" record likewise, fsync dir. Outcome in *res.
void write_one(const std::string& dir, const std::string& stem, const View& view,
               const std::vector<Chunk>& chunks, int j, int k, int64_t step,
               std::chrono::steady_clock::time_point deadline, StripeResult* res);

// "<what> <path>: ENOSPC (No space left on device)": an OS error as every snapshot error
// text spells it (the supervisor reads the errno name and the path back out of it).
std::string os_error(const std::string& what, const std::string& path, int err);

// Minimal JSON string escaping for names we put in headers and records.
std::string json_escape(const std::string& s);

}  // namespace jitc::snapshot
