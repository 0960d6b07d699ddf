// Environment parsing for the shim. The names below are the only place the C++ side
// spells them; keep them in step with jitc/env.py and docs/internals.md.
//
// A malformed or out-of-range JITC_* value is an error, never a silent default: the same
// grammar, ranges and one-line messages as jitc/env.py (tests/supervisor/test_limits.py
// feeds both the same values), so the shim cannot run on a limit the supervisor or
// protect() rejected.
#include "config.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <string>

#include "core.h"

namespace jitc {
namespace {

constexpr const char* kEnvSocket = "JITC_SOCKET";
constexpr const char* kEnvDir = "JITC_DIR";
constexpr const char* kEnvDebug = "JITC_DEBUG";
constexpr const char* kEnvRank = "RANK";
constexpr const char* kEnvLocalRank = "LOCAL_RANK";
constexpr const char* kEnvWorldSize = "WORLD_SIZE";

// A validated variable: its name, whether it is an integer, its lower bound (strict or
// not) and the rule as jitc/env.py words it.
struct Rule {
  const char* name;
  bool integer;
  double min;
  bool strict;
  const char* text;
};
constexpr Rule kAttempt{"JITC_ATTEMPT", true, 0, false, "an integer >= 0"};
constexpr Rule kHangTimeout{"JITC_HANG_TIMEOUT", false, 2 * limits::kProgressMinIntervalS, true,
                            "a number of seconds > 0.2"};
constexpr Rule kHangFloor{"JITC_HANG_FLOOR", false, 2 * limits::kProgressMinIntervalS, true,
                          "a number of seconds > 0.2"};
constexpr Rule kHangMultiple{"JITC_HANG_MULTIPLE", false, 1, false, "a number >= 1"};
constexpr Rule kGrace{"JITC_GRACE", false, 0, true, "a number of seconds > 0"};
constexpr Rule kSnapshotTimeout{"JITC_SNAPSHOT_TIMEOUT", false, 0, true,
                                "a number of seconds > 0"};

const char* get(const char* name) {
  const char* v = std::getenv(name);
  return (v != nullptr && v[0] != '\0') ? v : nullptr;
}

// [+-]digits, or with `decimal` also [+-](digits[.digits]|.digits)[e[+-]digits]: what
// jitc/env.py's pattern accepts (no spaces, no hex, no inf/nan, no underscores).
bool well_formed(const char* v, bool decimal) {
  const char* p = v;
  if (*p == '+' || *p == '-') ++p;
  int digits = 0;
  while (std::isdigit(static_cast<unsigned char>(*p))) ++p, ++digits;
  if (decimal && *p == '.') {
    ++p;
    while (std::isdigit(static_cast<unsigned char>(*p))) ++p, ++digits;
  }
  if (digits == 0) return false;
  if (decimal && (*p == 'e' || *p == 'E')) {
    ++p;
    if (*p == '+' || *p == '-') ++p;
    if (!std::isdigit(static_cast<unsigned char>(*p))) return false;
    while (std::isdigit(static_cast<unsigned char>(*p))) ++p;
  }
  return *p == '\0';
}

// The variable's value, `fallback` when unset; on a bad value the first error is kept
// in *error ("JITC_X='v': must be ...") and `fallback` returned.
double read(const Rule& r, double fallback, std::string* error) {
  const char* v = get(r.name);
  if (v == nullptr) return fallback;
  double d = well_formed(v, !r.integer) ? std::strtod(v, nullptr) : NAN;
  bool ok = std::isfinite(d) && (r.strict ? d > r.min : d >= r.min);
  if (ok && r.integer && d > 2147483647.0) ok = false;
  if (ok) return d;
  if (error->empty()) *error = std::string(r.name) + "='" + v + "': must be " + r.text;
  return fallback;
}

// torchrun's own variables: trusted as torchrun sets them; a malformed one falls back.
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
  c.attempt = static_cast<int>(read(kAttempt, 0, &c.error));
  c.hang_timeout_s = read(kHangTimeout, 0.0, &c.error);
  c.hang_floor_s = read(kHangFloor, limits::kHangFloorS, &c.error);
  c.hang_multiple = read(kHangMultiple, limits::kHangMultiple, &c.error);
  c.grace_s = read(kGrace, limits::kGraceS, &c.error);
  c.sigterm_hold_s = sigterm_hold_s(c.grace_s);
  c.snapshot_timeout_s = read(kSnapshotTimeout, limits::kSnapshotTimeoutS, &c.error);
  c.debug = debug_from_env();
  return c;
}

}  // namespace jitc
