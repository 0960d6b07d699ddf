// The rank's end of the supervisor channel (docs/internals.md, "Channel").
//
// AF_UNIX SOCK_SEQPACKET: one send() is one record, so the main thread, the agent thread
// and a fatal-signal handler may all send on the same descriptor without a shared lock.
// send() is async-signal-safe; recv() and connect_to() are for the agent / init only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace jitc::channel {

constexpr size_t kHeaderSize = 8;
constexpr size_t kMaxPayload = 60 * 1024;
constexpr uint8_t kVersion = 1;

enum Type : uint8_t {
  kHello = 1,
  kProgress = 2,
  kFailure = 3,
  kGoodbye = 4,
  kSnapshotDone = 5,
  kFaultInjected = 6,
  kResumed = 7,
  kState = 8,
  kQuery = 64,
  kSnapshot = 65,
  kRelease = 66,
};

// Connects to path, retrying (the supervisor may still be binding) for up to timeout_s.
// Returns the descriptor (close-on-exec) or -1 with a reason; a socket served by another
// user's process (SO_PEERCRED of the listener) is refused.
int connect_to(const std::string& path, double timeout_s, std::string* why);

// Sends one record: header + payload in a single sendmsg(). Never raises SIGPIPE. If the
// socket buffer is full it waits once, bounded (limits::kSendTimeoutMs). Async-signal-safe.
bool send(int fd, uint8_t type, const char* payload, size_t n);

enum class Recv {
  kMessage,     // *type, *payload, *n set
  kDropped,     // malformed record (bad magic, length, oversize): ignored
  kBadVersion,  // a version we do not speak: the caller closes
  kAgain,       // nothing to read
  kEof,         // peer closed
  kError,
};
// Reads one record without blocking into buf (cap >= kHeaderSize + kMaxPayload).
Recv recv(int fd, char* buf, size_t cap, uint8_t* type, const char** payload, size_t* n);

}  // namespace jitc::channel
