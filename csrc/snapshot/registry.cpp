// The registry of state tensors and the small replicated state blob (meta).
//
// Both are published as immutable generations behind shared_ptr: a snapshot grabs the
// current ones once and keeps reading them even if Python commits a new registry or sets
// new meta meanwhile (the old generation stays alive until the snapshot drops it). The
// lock is held only to swap or copy a pointer, never while writing, so the agent thread
// can snapshot while the main thread is stuck anywhere (invariant I5).
//
// WARNING: the registry stores raw pointers into tensors owned by Python. They must stay
// valid until the next commit; the Python session keeps the tensors alive for that.
#include <cinttypes>
#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_set>
#include <utility>

#include "snapshot/engine.h"
#include "snapshot/internal.h"

namespace jitc::snapshot {
namespace {

std::mutex g_mu;
std::shared_ptr<const Generation> g_current;             // committed
std::unique_ptr<Generation> g_building;                  // between begin and commit
std::unordered_set<std::string> g_building_names;
std::shared_ptr<const std::string> g_meta = std::make_shared<const std::string>();

}  // namespace

// 64-bit FNV-1a over (name, dtype, shape) of every entry, with separators so that
// ("ab","c") and ("a","bc") differ.
std::string compute_fingerprint(const std::vector<Entry>& entries) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) {
      h ^= b[i];
      h *= 0x100000001b3ull;
    }
  };
  const unsigned char sep = 0;
  for (const Entry& e : entries) {
    mix(e.name.data(), e.name.size());
    mix(&sep, 1);
    mix(e.dtype.data(), e.dtype.size());
    mix(&sep, 1);
    const uint64_t nd = e.shape.size();
    mix(&nd, sizeof nd);
    for (int64_t s : e.shape) mix(&s, sizeof s);
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, h);
  return buf;
}

bool check_entry(const Entry& e, std::string* msg) {
  auto fail = [&](const std::string& m) {
    *msg = m;
    return false;
  };
  if (e.name.empty()) return fail("empty name");
  // '@' separates a piece's element range; the two names are reserved by the format.
  if (e.name.find('@') != std::string::npos) return fail("name contains '@'");
  if (e.name == kMetaKey || e.name == "__metadata__") return fail("reserved name");
  const size_t es = dtype_size(e.dtype);
  if (es == 0) return fail("unknown dtype '" + e.dtype + "'");
  for (int64_t s : e.shape)
    if (s < 0) return fail("negative dimension");
  if (numel(e.shape) * es != e.nbytes)
    return fail("nbytes " + std::to_string(e.nbytes) + " != numel * " + std::to_string(es));
  if (e.nbytes > 0 && e.ptr == nullptr) return fail("null pointer");
  return true;
}

void registry_begin() {
  std::lock_guard<std::mutex> lk(g_mu);
  g_building = std::make_unique<Generation>();
  g_building_names.clear();
}

bool registry_add(Entry e, std::string* why) {
  auto fail = [&](const std::string& msg) {
    if (why) *why = "registry_add(" + e.name + "): " + msg;
    return false;
  };
  std::string msg;
  if (!check_entry(e, &msg)) return fail(msg);
  std::lock_guard<std::mutex> lk(g_mu);
  if (!g_building) return fail("registry_begin was not called");
  if (!g_building_names.insert(e.name).second) return fail("duplicate name");
  g_building->entries.push_back(std::move(e));
  return true;
}

void registry_commit() {
  std::lock_guard<std::mutex> lk(g_mu);
  if (!g_building) return;
  g_building->fingerprint = compute_fingerprint(g_building->entries);
  g_current = std::shared_ptr<const Generation>(g_building.release());
  g_building_names.clear();
}

void set_meta(const void* data, size_t n) {
  // Copy outside the lock (the blob may be large-ish); swap under it. The previous blob
  // stays alive for any snapshot that already holds it: this is the double buffer.
  auto blob = std::make_shared<const std::string>(static_cast<const char*>(data), n);
  std::lock_guard<std::mutex> lk(g_mu);
  g_meta = std::move(blob);
}

std::string fingerprint() {
  std::lock_guard<std::mutex> lk(g_mu);
  return g_current ? g_current->fingerprint : std::string();
}

uint64_t registered_bytes() {
  std::lock_guard<std::mutex> lk(g_mu);
  uint64_t n = 0;
  if (g_current)
    for (const Entry& e : g_current->entries) n += e.nbytes;
  return n;
}

View current_view() {
  std::lock_guard<std::mutex> lk(g_mu);
  return View{g_current, g_meta};
}

std::string json_escape(const std::string& s) {
  std::string o;
  o.reserve(s.size() + 2);
  for (unsigned char c : s) {
    switch (c) {
      case '"': o += "\\\""; break;
      case '\\': o += "\\\\"; break;
      case '\n': o += "\\n"; break;
      case '\r': o += "\\r"; break;
      case '\t': o += "\\t"; break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          o += b;
        } else {
          o += static_cast<char>(c);
        }
    }
  }
  return o;
}

}  // namespace jitc::snapshot
