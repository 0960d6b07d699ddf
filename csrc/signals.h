// Fatal-signal reporting, SIGTERM deferral and the _exit hook.
//
// A rank that dies by SIGSEGV/SIGBUS/SIGABRT/SIGFPE/SIGILL tells the supervisor why
// before it dies, then dies exactly as it would have (previous disposition restored and
// the signal re-raised, so a chained handler such as Python's faulthandler still runs and
// the exit status still shows the signal). A SIGTERM that would cut a snapshot short, or
// arrive before the supervisor's SNAPSHOT command, is held by the agent thread (bounded).
// Everything that runs in a handler is async-signal-safe: no malloc, no locks, no stdio.
#pragma once

namespace jitc::signals {

// Installs the handlers (idempotent). Called by jitc_init after the state is filled in.
void install();
// Restores every disposition we replaced (jitc_shutdown).
void uninstall();
// Agent thread: a held SIGTERM is due; restore the previous disposition and re-raise it.
void release_sigterm();

}  // namespace jitc::signals
