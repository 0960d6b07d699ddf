// Configuration of the shim: every tunable and every environment variable the C++ side
// reads, in one place (invariants I6 and I7). docs/internals.md is the table of names;
// jitc/env.py is the Python twin. Precedence: explicit argument > environment > default.
#pragma once

#include <cstdint>
#include <string>

namespace jitc {

// Every bounded wait of the core, named once. Changing one changes it everywhere.
//
// The limits a supervisor sets for its job (hang timeout and its rule, grace, snapshot
// timeout) are *told* to the shim through the environment (the Config fields below); the
// constants here are only their defaults for a shim-only run. Their Python twin is
// jitc/limits.py, the one place they are set: tests/supervisor/test_limits.py checks that
// both sides agree (jitc_limits() reports what this side uses).
namespace limits {
constexpr int kTickMs = 50;                     // agent loop period (poll timeout)
constexpr double kProgressMinIntervalS = 0.1;   // PROGRESS at most this often (heartbeat)
constexpr double kConnectTimeoutS = 2.0;        // connect() retries to JITC_SOCKET
constexpr int kSendTimeoutMs = 1000;            // a full socket buffer: wait this long once
// The hang rule: fixed JITC_HANG_TIMEOUT, else max(floor, multiple x p95 of the last
// kHangWindow step times), kHangInitialS until kHangMinSamples step times are known.
constexpr double kHangInitialS = 600.0;
constexpr double kHangFloorS = 30.0;            // default of JITC_HANG_FLOOR
constexpr double kHangMultiple = 5.0;           // default of JITC_HANG_MULTIPLE
constexpr int kHangPercentile = 95;             // nearest-rank percentile of step times
constexpr int kHangWindow = 64;                 // step durations kept for the percentile
constexpr int kHangMinSamples = 3;
constexpr double kGraceS = 10.0;                // default of JITC_GRACE (SIGTERM -> SIGKILL)
// A SIGTERM is held (a snapshot runs, or the supervisor may still ask for one) at most
// grace - min(kSigtermHoldMarginS, grace / 2): strictly less than the grace, so the rank
// leaves on its own before the SIGKILL.
constexpr double kSigtermHoldMarginS = 1.0;
constexpr double kSnapshotTimeoutS = 120.0;     // default of JITC_SNAPSHOT_TIMEOUT
constexpr double kSnapshotJoinGraceS = 2.0;     // the writer waits this past its deadline
constexpr double kSnapshotWindowWaitS = 30.0;   // a snapshot waits this long for the window
constexpr double kWindowStuckS = 5.0;           // window open longer than this = not usable
constexpr double kOrphanGraceS = 5.0;           // supervisor gone: SIGTERM, then SIGKILL after
constexpr double kAgentJoinS = 5.0;             // jitc_shutdown waits this long for the agent
// Exit status of a rank that wrote its local snapshot in shim-only mode (EX_TEMPFAIL:
// "try again", which is what torchrun --max-restarts will do).
constexpr int kLocalRecoveryExitCode = 75;
}  // namespace limits

// The SIGTERM hold derived from the grace (see kSigtermHoldMarginS).
constexpr double sigterm_hold_s(double grace_s) {
  return grace_s - (grace_s / 2 < limits::kSigtermHoldMarginS ? grace_s / 2
                                                              : limits::kSigtermHoldMarginS);
}

struct Config {
  int rank = 0, local_rank = 0, world_size = 1, shard = 0, num_shards = 1;
  std::string socket_path;      // JITC_SOCKET; empty = shim-only mode
  std::string dir;              // JITC_DIR; empty = no local snapshots
  int attempt = 0;              // JITC_ATTEMPT
  double hang_timeout_s = 0;    // JITC_HANG_TIMEOUT; 0 = derived from step times
  double hang_floor_s = limits::kHangFloorS;        // JITC_HANG_FLOOR
  double hang_multiple = limits::kHangMultiple;     // JITC_HANG_MULTIPLE
  double grace_s = limits::kGraceS;                 // JITC_GRACE
  double sigterm_hold_s = jitc::sigterm_hold_s(limits::kGraceS);   // derived from grace_s
  double snapshot_timeout_s = limits::kSnapshotTimeoutS;           // JITC_SNAPSHOT_TIMEOUT
  bool debug = false;           // JITC_DEBUG=1
  // A malformed JITC_* value, as one line ("JITC_X='v': must be ..."), the same text
  // jitc/env.py gives; empty when every value is valid. jitc_init refuses to start with
  // it: the shim never runs on a default the user did not choose.
  std::string error;
};

// Reads the environment. Arguments are the explicit values from jitc_init().
Config load_config(int rank, int local_rank, int world_size, int shard, int num_shards);

// For auto-activation (core.h): RANK / LOCAL_RANK / WORLD_SIZE as torchrun sets them, and
// whether jitc is in use (JITC_SOCKET or JITC_DIR set). False if RANK is not set.
bool rank_from_env(int* rank, int* local_rank, int* world_size);
bool jitc_in_use_from_env();

// JITC_DEBUG=1, read once (the logger asks before any jitc_init).
bool debug_from_env();

}  // namespace jitc
