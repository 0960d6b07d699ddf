// Framing and socket calls of the supervisor channel. See channel.h.
#include "channel.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <string>

#include "config.h"
#include "core.h"

namespace jitc::channel {
namespace {

void put_header(char* h, uint8_t type, uint32_t n) {
  h[0] = 'J';
  h[1] = 'T';
  h[2] = static_cast<char>(kVersion);
  h[3] = static_cast<char>(type);
  h[4] = static_cast<char>(n & 0xFF);
  h[5] = static_cast<char>((n >> 8) & 0xFF);
  h[6] = static_cast<char>((n >> 16) & 0xFF);
  h[7] = static_cast<char>((n >> 24) & 0xFF);
}

}  // namespace

int connect_to(const std::string& path, double timeout_s, std::string* why) {
  struct sockaddr_un addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    *why = "socket path too long: " + path;
    return -1;
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  uint64_t deadline = now_ns() + static_cast<uint64_t>(timeout_s * 1e9);
  int last_errno = 0;
  for (;;) {
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0) {
      *why = std::string("socket: ") + std::strerror(errno);
      return -1;
    }
    if (connect(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof addr) == 0) {
      // Whoever listens there is the one whose commands this rank obeys: it must be this
      // user's (issue 13: a socket swapped by another user got both root ranks' state).
      struct ucred cred;
      socklen_t len = sizeof cred;
      if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
        *why = "connect " + path + ": no peer credentials: " + std::strerror(errno);
        close(fd);
        return -1;
      }
      if (cred.uid != geteuid()) {
        *why = "connect " + path + ": the socket is served by uid " + std::to_string(cred.uid) +
               " (pid " + std::to_string(cred.pid) + "), not by this user (uid " +
               std::to_string(geteuid()) + "): refusing it";
        close(fd);
        return -1;
      }
      return fd;
    }
    last_errno = errno;
    close(fd);
    // Only "not there yet" is worth retrying; anything else will not heal in 2 s.
    bool retry = last_errno == ENOENT || last_errno == ECONNREFUSED || last_errno == EAGAIN ||
                 last_errno == EINTR;
    if (!retry || now_ns() >= deadline) break;
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, nullptr);
  }
  *why = "connect " + path + ": " + std::strerror(last_errno);
  return -1;
}

bool send(int fd, uint8_t type, const char* payload, size_t n) {
  if (fd < 0 || n > kMaxPayload) return false;
  int saved_errno = errno;  // may run in a signal handler: leave errno as found
  char header[kHeaderSize];
  put_header(header, type, static_cast<uint32_t>(n));
  struct iovec iov[2] = {{header, kHeaderSize}, {const_cast<char*>(payload), n}};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = iov;
  msg.msg_iovlen = 2;
  bool ok = false;
  for (int attempt = 0; attempt < 2 && !ok; ++attempt) {
    ssize_t r;
    do {
      r = sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    } while (r < 0 && errno == EINTR);
    if (r >= 0) {
      ok = true;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      // The supervisor is slow to read: wait once for room, bounded.
      struct pollfd p = {fd, POLLOUT, 0};
      if (poll(&p, 1, limits::kSendTimeoutMs) <= 0) break;
    } else {
      break;
    }
  }
  errno = saved_errno;
  return ok;
}

Recv recv(int fd, char* buf, size_t cap, uint8_t* type, const char** payload, size_t* n) {
  struct iovec iov = {buf, cap};
  struct msghdr msg;
  std::memset(&msg, 0, sizeof msg);
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  ssize_t r;
  do {
    r = recvmsg(fd, &msg, MSG_DONTWAIT);
  } while (r < 0 && errno == EINTR);
  if (r < 0) return (errno == EAGAIN || errno == EWOULDBLOCK) ? Recv::kAgain : Recv::kError;
  if (r == 0) {
    // SEQPACKET: 0 is either the peer's shutdown or an empty record. Only a hang-up is EOF.
    struct pollfd p = {fd, POLLRDHUP, 0};
    if (poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP)) != 0) return Recv::kEof;
    return Recv::kDropped;
  }
  size_t len = static_cast<size_t>(r);
  if ((msg.msg_flags & MSG_TRUNC) != 0 || len < kHeaderSize || buf[0] != 'J' || buf[1] != 'T')
    return Recv::kDropped;
  if (static_cast<uint8_t>(buf[2]) != kVersion) return Recv::kBadVersion;
  const unsigned char* h = reinterpret_cast<const unsigned char*>(buf);
  uint32_t declared = h[4] | (h[5] << 8) | (h[6] << 16) | (static_cast<uint32_t>(h[7]) << 24);
  if (declared != len - kHeaderSize || declared > kMaxPayload) return Recv::kDropped;
  *type = h[3];
  *payload = buf + kHeaderSize;
  *n = declared;
  return Recv::kMessage;
}

}  // namespace jitc::channel
