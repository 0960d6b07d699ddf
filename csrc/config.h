// Configuration of the shim: every tunable and every environment variable the C++ side
// reads, in one place (invariants I6 and I7). docs/internals.md is the table of names;
// jitc/env.py is the Python twin. Precedence: explicit argument > environment > default.
#pragma once

#include <cstdint>
#include <string>

namespace jitc {

// Every bounded wait of the core, named once. Changing one changes it everywhere.
namespace limits {
constexpr int kTickMs = 50;                     // agent loop period (poll timeout)
constexpr double kProgressMinIntervalS = 0.1;   // PROGRESS at most this often
constexpr double kConnectTimeoutS = 2.0;        // connect() retries to JITC_SOCKET
constexpr int kSendTimeoutMs = 1000;            // a full socket buffer: wait this long once
constexpr double kHangInitialS = 600.0;         // before kHangMinSamples step times are known
constexpr double kHangFloorS = 30.0;            // derived timeout never below this
constexpr double kHangMultiple = 5.0;           // derived timeout = multiple x p95(step time)
constexpr int kHangWindow = 64;                 // step durations kept for the p95
constexpr int kHangMinSamples = 3;
constexpr double kSigtermHoldS = 30.0;          // SIGTERM held while a snapshot runs
constexpr double kSigtermAwaitCommandS = 10.0;  // supervised: SIGTERM waits for SNAPSHOT/RELEASE
constexpr double kSnapshotWindowWaitS = 30.0;   // a snapshot waits this long for the window
constexpr double kSnapshotTimeoutS = 300.0;     // write_stripes bound when the command has none
constexpr double kWindowStuckS = 5.0;           // window open longer than this = not usable
constexpr double kOrphanGraceS = 5.0;           // supervisor gone: SIGTERM, then SIGKILL after
constexpr double kAgentJoinS = 5.0;             // jitc_shutdown waits this long for the agent
// Exit status of a rank that wrote its local snapshot in shim-only mode (EX_TEMPFAIL:
// "try again", which is what torchrun --max-restarts will do).
constexpr int kLocalRecoveryExitCode = 75;
}  // namespace limits

struct Config {
  int rank = 0, local_rank = 0, world_size = 1, shard = 0, num_shards = 1;
  std::string socket_path;      // JITC_SOCKET; empty = shim-only mode
  std::string dir;              // JITC_DIR; empty = no local snapshots
  int attempt = 0;              // JITC_ATTEMPT
  double hang_timeout_s = 0;    // JITC_HANG_TIMEOUT; <= 0 = derived from step times
  double hang_floor_s = limits::kHangFloorS;        // JITC_HANG_FLOOR
  double hang_multiple = limits::kHangMultiple;     // JITC_HANG_MULTIPLE
  bool debug = false;           // JITC_DEBUG=1
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
