// Environment parsing for the shim. The names below are the only place the C++ side
// spells them; keep them in step with jitc/env.py and docs/internals.md.
#include "config.h"

#include <cstdlib>

#include "core.h"

namespace jitc {
namespace {

constexpr const char* kEnvSocket = "JITC_SOCKET";
constexpr const char* kEnvDir = "JITC_DIR";
constexpr const char* kEnvAttempt = "JITC_ATTEMPT";
constexpr const char* kEnvHangTimeout = "JITC_HANG_TIMEOUT";
constexpr const char* kEnvHangFloor = "JITC_HANG_FLOOR";
constexpr const char* kEnvHangMultiple = "JITC_HANG_MULTIPLE";
constexpr const char* kEnvDebug = "JITC_DEBUG";
constexpr const char* kEnvRank = "RANK";
constexpr const char* kEnvLocalRank = "LOCAL_RANK";
constexpr const char* kEnvWorldSize = "WORLD_SIZE";

const char* get(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && v[0] != '\0') ? v : nullptr;
}

// A malformed number falls back to the default (logged): a typo in an optional tuning
// variable must not take a training job down.
double get_double(const char* name, double fallback) {
  const char* v = get(name);
  if (v == nullptr) return fallback;
  char* end = nullptr;
  double d = std::strtod(v, &end);
  if (end == v || *end != '\0') {
    debug("ignoring %s=%s: not a number", name, v);
    return fallback;
  }
  return d;
}

long get_long(const char* name, long fallback, bool* found = nullptr) {
  const char* v = get(name);
  if (found != nullptr) *found = false;
  if (v == nullptr) return fallback;
  char* end = nullptr;
  long l = std::strtol(v, &end, 10);
  if (end == v || *end != '\0') {
    debug("ignoring %s=%s: not an integer", name, v);
    return fallback;
  }
  if (found != nullptr) *found = true;
  return l;
}

}  // namespace

bool debug_from_env() {
  const char* v = get(kEnvDebug);
  return v != nullptr && v[0] == '1' && v[1] == '\0';
}

bool rank_from_env(int* rank, int* local_rank, int* world_size) {
  bool found = false;
  *rank = static_cast<int>(get_long(kEnvRank, 0, &found));
  *local_rank = static_cast<int>(get_long(kEnvLocalRank, 0));
  *world_size = static_cast<int>(get_long(kEnvWorldSize, 1));
  return found;
}

bool jitc_in_use_from_env() { return get(kEnvSocket) != nullptr || get(kEnvDir) != nullptr; }

Config load_config(int rank, int local_rank, int world_size, int shard, int num_shards) {
  Config c;
  c.rank = rank;
  c.local_rank = local_rank;
  c.world_size = world_size;
  c.shard = shard;
  c.num_shards = num_shards;
  if (const char* s = get(kEnvSocket)) c.socket_path = s;
  if (const char* d = get(kEnvDir)) c.dir = d;
  c.attempt = static_cast<int>(get_long(kEnvAttempt, 0));
  c.hang_timeout_s = get_double(kEnvHangTimeout, 0.0);
  c.hang_floor_s = get_double(kEnvHangFloor, limits::kHangFloorS);
  c.hang_multiple = get_double(kEnvHangMultiple, limits::kHangMultiple);
  if (c.hang_multiple <= 0) c.hang_multiple = limits::kHangMultiple;
  c.debug = debug_from_env();
  return c;
}

}  // namespace jitc
