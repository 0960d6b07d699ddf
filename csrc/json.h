// The JSON of the supervisor channel, written and read by hand.
//
// Why not a library: the fatal-signal handler and the _exit hook must build a FAILURE
// message with no malloc, no locale, no locks. JsonWriter writes into a caller's (stack)
// buffer and formats numbers itself, so every method is async-signal-safe. The reader is
// only used on the agent thread for the few supervisor commands and may allocate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace jitc::json {

// Builds one JSON object. On overflow it stops writing and finish() returns 0.
class Writer {
 public:
  Writer(char* buf, size_t cap);
  Writer& str(const char* key, const char* value);   // escaped, bad UTF-8 -> U+FFFD; nullptr -> null
  Writer& i64(const char* key, int64_t value);
  Writer& num(const char* key, double value);        // fixed, 6 decimals; NaN/inf -> null
  Writer& boolean(const char* key, bool value);
  Writer& raw(const char* key, const char* json);    // value already JSON (e.g. "[1,2,3]")
  Writer& ts();                                      // "ts": unix seconds (CLOCK_REALTIME)
  size_t finish();                                   // appends '}', returns length or 0
  bool ok() const { return ok_; }
  const char* data() const { return buf_; }

 private:
  void key(const char* k);
  void put(char c);
  void puts(const char* s);
  void escaped(const char* s);

  char* buf_;
  size_t cap_, len_ = 0;
  bool ok_ = true, first_ = true;
};

// Async-signal-safe number formatting; return chars written (no terminator), 0 if no room.
size_t format_i64(char* out, size_t cap, int64_t v);
size_t format_fixed6(char* out, size_t cap, double v);

struct Value {
  enum class Type { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool b = false;
  double num = 0;
  std::string s;
  std::vector<Value> arr;
  std::vector<std::pair<std::string, Value>> obj;

  const Value* get(const char* key) const;          // object member or nullptr
  bool is_number() const { return type == Type::Number; }
  bool is_string() const { return type == Type::String; }
  // A number that is a whole value in [lo, hi] (1.0 counts, 1.5 does not): *out set.
  bool as_int(int64_t lo, int64_t hi, int64_t* out) const;
};

// Parses one JSON document (RFC 8259, depth-limited, strings valid UTF-8 without NUL,
// numbers finite). false with a reason on malformed input.
bool parse(const char* text, size_t n, Value* out, std::string* why);

}  // namespace jitc::json
