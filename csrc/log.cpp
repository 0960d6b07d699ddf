// jitc::debug: the shim's log (invariant I7). Silent unless JITC_DEBUG=1; then one write(2)
// per line to stderr, so lines from several threads do not interleave mid-line. jitc::notice:
// the one-line stderr notice of a real event (core.h), the same way.
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>

#include "config.h"
#include "core.h"

namespace jitc {
namespace {
// -1 unknown, 0 off, 1 on. Read lazily: the logger may be asked before jitc_init.
std::atomic<int> g_debug{-1};
}  // namespace

void debug(const char* fmt, ...) {
  int on = g_debug.load(std::memory_order_relaxed);
  if (on < 0) {
    on = debug_from_env() ? 1 : 0;
    g_debug.store(on, std::memory_order_relaxed);
  }
  if (on == 0) return;
  char line[1024];
  int n = std::snprintf(line, sizeof line, "[jitc %d:%ld] ", static_cast<int>(getpid()),
                        static_cast<long>(syscall(SYS_gettid)));
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  size_t len = static_cast<size_t>(n) + (m < 0 ? 0 : static_cast<size_t>(m));
  if (len > sizeof line - 2) len = sizeof line - 2;
  line[len++] = '\n';
  ssize_t ignored = write(STDERR_FILENO, line, len);
  (void)ignored;
}

void notice(const char* fmt, ...) {
  char line[1024] = "jitc: ";
  const size_t n = 6;
  va_list ap;
  va_start(ap, fmt);
  int m = std::vsnprintf(line + n, sizeof line - n - 1, fmt, ap);
  va_end(ap);
  size_t len = n + (m < 0 ? 0 : static_cast<size_t>(m));
  if (len > sizeof line - 2) len = sizeof line - 2;
  line[len++] = '\n';
  ssize_t ignored = write(STDERR_FILENO, line, len);
  (void)ignored;
}

}  // namespace jitc
