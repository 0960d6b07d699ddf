// The agent thread: the shim's one thread in an active rank.
//
// It does everything that must not depend on Python or on the main thread making
// progress (invariant I5): it receives supervisor commands and runs snapshots itself,
// ticks the watchdog, sends PROGRESS, runs the interposers' pollers, re-raises a held
// SIGTERM when it is due, and makes sure a rank whose supervisor died does not live on
// as an orphan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace jitc::agent {

// Starts the thread (jitc_init). false with a reason if it could not.
bool start(std::string* why);
// Stops it, waiting at most timeout_s; a thread that does not stop in time is detached.
void stop(double timeout_s);

// Shim-only recovery (no supervisor): write stripe 0 of 1 of the registered state into
// <JITC_DIR>/snap-a<attempt>-s<step>-<rank>/ and exit the process with
// limits::kLocalRecoveryExitCode. Never returns. Any thread; a second caller just waits
// for the first to finish.
[[noreturn]] void local_recovery(const char* reason);

// mkdir -p. false with a reason.
bool make_dirs(const std::string& path, std::string* why);

}  // namespace jitc::agent
