// Signal handlers and the _exit hook. See signals.h.
//
// WARNING: every function reachable from fatal_handler, sigterm_handler and _exit must be
// async-signal-safe. json::Writer, channel::send, atomics and sigaction/raise/kill are.
#include "signals.h"

#include <dlfcn.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "channel.h"
#include "config.h"
#include "json.h"
#include "state.h"

namespace jitc::signals {
namespace {

struct Fatal {
  int sig;
  const char* name;
};
constexpr Fatal kFatal[] = {{SIGSEGV, "SIGSEGV"}, {SIGBUS, "SIGBUS"}, {SIGABRT, "SIGABRT"},
                            {SIGFPE, "SIGFPE"},   {SIGILL, "SIGILL"}};

struct sigaction g_old[NSIG];
bool g_installed[NSIG];
std::atomic<bool> g_any_installed{false};
void* g_altstack = nullptr;

const char* fatal_name(int sig) {
  for (const Fatal& f : kFatal)
    if (f.sig == sig) return f.name;
  return "SIG?";
}

// Put back what was there and send the signal again: on return from our handler it is
// delivered to the previous handler (or kills the process with the default action).
void restore_and_reraise(int sig) {
  if (g_installed[sig]) sigaction(sig, &g_old[sig], nullptr);
  g_installed[sig] = false;
  raise(sig);
}

void fatal_handler(int sig, siginfo_t*, void*) {
  State& s = state();
  if (getpid() == s.init_pid && !s.fatal_sent.exchange(true)) {
    char buf[512];
    json::Writer w(buf, sizeof buf);
    failure_header(w, FailureKind::Signal);
    w.str("signal", fatal_name(sig)).str("detail", "fatal signal");
    send_msg(channel::kFailure, w);
  }
  restore_and_reraise(sig);
}

// Whether a SIGTERM must wait: a snapshot is being written, or (supervised, before
// RELEASE) the supervisor may still ask this healthy rank for one, or (shim-only, training
// under way) the agent may write this rank's own snapshot first (agent.cpp check_sigterm
// decides, bounded by the hold). The launcher's SIGTERM is not this rank's fault; a rank
// that reported a failure of its own (suspect) is not held.
bool should_hold_sigterm() {
  State& s = state();
  if (!hot::active.load(std::memory_order_acquire)) return false;
  if (s.snapshot_running.load(std::memory_order_acquire)) return true;
  if (s.cfg.socket_path.empty()) {
    if (s.cfg.dir.empty()) return false;
    if (s.recovering.load(std::memory_order_acquire)) return true;
    return s.stepping.load(std::memory_order_acquire) &&
           !s.suspect.load(std::memory_order_acquire);
  }
  bool supervised = s.fd.load(std::memory_order_acquire) >= 0 &&
                    !s.orphaned.load(std::memory_order_acquire);
  return supervised && !s.release_received.load(std::memory_order_acquire);
}

void sigterm_handler(int sig, siginfo_t*, void*) {
  State& s = state();
  if (!should_hold_sigterm()) {
    restore_and_reraise(sig);
    return;
  }
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  uint64_t now = static_cast<uint64_t>(t.tv_sec) * 1000000000ull + static_cast<uint64_t>(t.tv_nsec);
  uint64_t expected = 0;
  s.term_pending_ns.compare_exchange_strong(expected, now == 0 ? 1 : now);
  wake_agent();
}

void set_handler(int sig, void (*fn)(int, siginfo_t*, void*)) {
  if (g_installed[sig]) return;
  struct sigaction sa;
  std::memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = fn;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  sigemptyset(&sa.sa_mask);
  if (sigaction(sig, &sa, &g_old[sig]) == 0) g_installed[sig] = true;
}

// A stack overflow SEGV needs somewhere to run the handler. Only for the calling thread
// (sigaltstack is per thread), and only if it has none: Python's faulthandler sets one.
void ensure_altstack() {
  stack_t old;
  if (sigaltstack(nullptr, &old) != 0 || (old.ss_flags & SS_DISABLE) == 0) return;
  const size_t size = 64 * 1024;
  if (g_altstack == nullptr) g_altstack = std::malloc(size);
  if (g_altstack == nullptr) return;
  stack_t ss;
  ss.ss_sp = g_altstack;
  ss.ss_size = size;
  ss.ss_flags = 0;
  sigaltstack(&ss, nullptr);
}

using ExitFn = void (*)(int);
std::atomic<ExitFn> g_real_exit{nullptr};

void resolve_real_exit() {
  if (g_real_exit.load(std::memory_order_acquire) != nullptr) return;
  auto fn = reinterpret_cast<ExitFn>(dlsym(RTLD_NEXT, "_exit"));
  g_real_exit.store(fn, std::memory_order_release);
}

}  // namespace

void install() {
  resolve_real_exit();  // dlsym is not signal-safe: do it now, not in _exit
  ensure_altstack();
  for (const Fatal& f : kFatal) set_handler(f.sig, fatal_handler);
  set_handler(SIGTERM, sigterm_handler);
  g_any_installed.store(true, std::memory_order_release);
}

void uninstall() {
  if (!g_any_installed.exchange(false)) return;
  for (int sig = 1; sig < NSIG; ++sig) {
    if (!g_installed[sig]) continue;
    sigaction(sig, &g_old[sig], nullptr);
    g_installed[sig] = false;
  }
}

void release_sigterm() {
  debug("re-raising the held SIGTERM");
  if (g_installed[SIGTERM]) sigaction(SIGTERM, &g_old[SIGTERM], nullptr);
  g_installed[SIGTERM] = false;
  kill(getpid(), SIGTERM);
}

}  // namespace jitc::signals

// The _exit hook: `os._exit(13)` in a rank is attributed (FAILURE kind "exit") before the
// process goes. Only in the initialised process itself (not a forked child), only for a
// non-zero status, only if no GOODBYE was sent. Async-signal-safe like _exit itself.
extern "C" __attribute__((visibility("default"))) void _exit(int status) {
  using jitc::state;
  jitc::State& s = state();
  if (status != 0 && jitc::hot::active.load(std::memory_order_acquire) && getpid() == s.init_pid &&
      !s.goodbye_sent.load(std::memory_order_acquire) && !s.fatal_sent.exchange(true)) {
    char buf[512];
    jitc::json::Writer w(buf, sizeof buf);
    jitc::failure_header(w, jitc::FailureKind::Exit);
    w.i64("code", status).str("detail", "_exit with non-zero status");
    jitc::send_msg(jitc::channel::kFailure, w);
  }
  auto real = jitc::signals::g_real_exit.load(std::memory_order_acquire);
  if (real != nullptr) real(status);
  // Not resolved (never initialised, or nothing after us): what glibc's _exit does.
  for (;;) syscall(SYS_exit_group, status);
}
