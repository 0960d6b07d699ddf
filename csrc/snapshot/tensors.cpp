// Tensors handed in by the caller, written as a one-stripe snapshot by the stripe writer.
//
// Why: a stage that CheckFree rebuilds exists only in the supervisor, which has no registry
// and no agent. It is written by the same code as every rank's stripe (header.cpp, the
// fingerprint and entry rules of registry.cpp, write_one in writer.cpp) over a private
// generation built from the caller's tensors, so the format has one writer.
//
// Runs on the calling thread and starts none (the supervisor has loaded the library
// without preloading it, and has no use for the agent); host memory only.
#include <chrono>
#include <memory>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

#include "snapshot/engine.h"
#include "snapshot/internal.h"

namespace jitc::snapshot {

bool check_tensors(const std::vector<Entry>& entries, std::string* why) {
  std::unordered_set<std::string> names;
  for (const Entry& e : entries) {
    std::string msg;
    if (e.device != -1) msg = "not in host memory";
    else if (check_entry(e, &msg) && !names.insert(e.name).second) msg = "duplicate name";
    if (!msg.empty()) {
      *why = "tensor " + e.name + ": " + msg;
      return false;
    }
  }
  return true;
}

bool write_tensors(const std::string& dir, const std::string& stem, std::vector<Entry> entries,
                   std::string meta, int64_t step, double timeout_s, std::string* why) {
  if (!plain_name(stem)) {
    *why = "bad file stem (not a plain file name)";
    return false;
  }
  if (step < 0) {
    *why = "negative step " + std::to_string(step);
    return false;
  }
  if (!(timeout_s > 0)) {
    *why = "timeout must be > 0";
    return false;
  }
  if (!check_tensors(entries, why)) return false;
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                           std::chrono::duration<double>(timeout_s));
  auto gen = std::make_shared<Generation>();
  gen->entries = std::move(entries);
  gen->fingerprint = compute_fingerprint(gen->entries);
  const View view{gen, std::make_shared<const std::string>(std::move(meta))};
  StripeResult res;
  write_one(dir, stem, view, assign_stripes(gen->entries, 1)[0], 0, 1, step, deadline, &res);
  if (!res.ok) *why = res.error;
  return res.ok;
}

}  // namespace jitc::snapshot
