// Hand-written JSON writer (async-signal-safe) and reader (agent thread). See json.h.
#include "json.h"

#include <time.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace jitc::json {
namespace {

// Length of the well-formed UTF-8 sequence at p (at most avail bytes), 0 if it is not one
// (stray continuation, overlong form, surrogate, beyond U+10FFFF, truncated).
size_t utf8_len(const unsigned char* p, size_t avail) {
  unsigned char c = p[0];
  size_t n;
  unsigned char lo = 0x80, hi = 0xBF;   // bounds of the second byte
  if (c < 0x80) return 1;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (avail < n || p[1] < lo || p[1] > hi) return 0;
  for (size_t i = 2; i < n; ++i)
    if ((p[i] & 0xC0) != 0x80) return 0;
  return n;
}

}  // namespace

size_t format_i64(char* out, size_t cap, int64_t v) {
  char tmp[24];
  size_t n = 0;
  // Work on the magnitude as unsigned so INT64_MIN does not overflow.
  uint64_t mag = v < 0 ? 0 - static_cast<uint64_t>(v) : static_cast<uint64_t>(v);
  do {
    tmp[n++] = static_cast<char>('0' + mag % 10);
    mag /= 10;
  } while (mag != 0);
  if (v < 0) tmp[n++] = '-';
  if (n > cap) return 0;
  for (size_t i = 0; i < n; ++i) out[i] = tmp[n - 1 - i];
  return n;
}

size_t format_fixed6(char* out, size_t cap, double v) {
  if (!std::isfinite(v) || std::fabs(v) > 9.0e12) return 0;
  bool neg = v < 0;
  double mag = neg ? -v : v;
  uint64_t micros = static_cast<uint64_t>(mag * 1e6 + 0.5);
  uint64_t whole = micros / 1000000, frac = micros % 1000000;
  char tmp[40];
  size_t n = 0;
  if (neg && micros != 0) tmp[n++] = '-';
  n += format_i64(tmp + n, sizeof tmp - n, static_cast<int64_t>(whole));
  tmp[n++] = '.';
  for (uint64_t div = 100000; div != 0; div /= 10) tmp[n++] = static_cast<char>('0' + (frac / div) % 10);
  if (n > cap) return 0;
  std::memcpy(out, tmp, n);
  return n;
}

Writer::Writer(char* buf, size_t cap) : buf_(buf), cap_(cap) { put('{'); }

void Writer::put(char c) {
  // Keep one byte for the closing brace.
  if (!ok_ || len_ + 2 > cap_) {
    ok_ = false;
    return;
  }
  buf_[len_++] = c;
}

void Writer::puts(const char* s) {
  while (*s != '\0') put(*s++);
}

void Writer::escaped(const char* s) {
  static const char kHex[] = "0123456789abcdef";
  put('"');
  const unsigned char* p = reinterpret_cast<const unsigned char*>(s);
  for (; *p != 0; ++p) {
    unsigned char c = *p;
    if (c >= 0x80) {
      // The receiver drops a record that is not UTF-8: a detail cut mid-character (or
      // bytes from a C library) must not cost the whole report. The NUL ends the scan.
      // avail 4: the scan stops at the first byte that is not a continuation, so it
      // never reads past the NUL.
      size_t n = utf8_len(p, 4);
      if (n == 0) {
        puts("\\ufffd");
      } else {
        for (size_t i = 0; i < n; ++i) put(static_cast<char>(p[i]));
        p += n - 1;
      }
      continue;
    }
    if (c == '"' || c == '\\') {
      put('\\');
      put(static_cast<char>(c));
    } else if (c == '\n') {
      puts("\\n");
    } else if (c < 0x20) {
      puts("\\u00");
      put(kHex[c >> 4]);
      put(kHex[c & 15]);
    } else {
      put(static_cast<char>(c));
    }
  }
  put('"');
}

void Writer::key(const char* k) {
  if (!first_) put(',');
  first_ = false;
  escaped(k);
  put(':');
}

Writer& Writer::str(const char* k, const char* v) {
  key(k);
  if (v == nullptr) puts("null");
  else escaped(v);
  return *this;
}

Writer& Writer::i64(const char* k, int64_t v) {
  key(k);
  char tmp[24];
  size_t n = format_i64(tmp, sizeof tmp, v);
  for (size_t i = 0; i < n; ++i) put(tmp[i]);
  return *this;
}

Writer& Writer::num(const char* k, double v) {
  key(k);
  char tmp[40];
  size_t n = format_fixed6(tmp, sizeof tmp, v);
  if (n == 0) puts("null");
  for (size_t i = 0; i < n; ++i) put(tmp[i]);
  return *this;
}

Writer& Writer::boolean(const char* k, bool v) {
  key(k);
  puts(v ? "true" : "false");
  return *this;
}

Writer& Writer::raw(const char* k, const char* json) {
  key(k);
  puts(json);
  return *this;
}

Writer& Writer::ts() {
  struct timespec t;
  clock_gettime(CLOCK_REALTIME, &t);  // async-signal-safe
  key("ts");
  char tmp[40];
  size_t n = format_i64(tmp, sizeof tmp, static_cast<int64_t>(t.tv_sec));
  tmp[n++] = '.';
  long us = t.tv_nsec / 1000;
  for (long div = 100000; div != 0; div /= 10) tmp[n++] = static_cast<char>('0' + (us / div) % 10);
  for (size_t i = 0; i < n; ++i) put(tmp[i]);
  return *this;
}

size_t Writer::finish() {
  if (!ok_ || len_ + 1 > cap_) return 0;
  buf_[len_++] = '}';
  return len_;
}

bool Value::as_int(int64_t lo, int64_t hi, int64_t* out) const {
  // 2^63 is exact as a double; anything at or past it does not fit an int64.
  if (type != Type::Number || !std::isfinite(num) || num != std::floor(num) ||
      num < -9223372036854775808.0 || num >= 9223372036854775808.0)
    return false;
  int64_t v = static_cast<int64_t>(num);
  if (v < lo || v > hi) return false;
  *out = v;
  return true;
}

const Value* Value::get(const char* k) const {
  if (type != Type::Object) return nullptr;
  for (const auto& kv : obj)
    if (kv.first == k) return &kv.second;
  return nullptr;
}

namespace {

constexpr int kMaxDepth = 32;

struct Parser {
  const char* p;
  const char* end;
  std::string why;

  bool fail(const char* what) {
    if (why.empty()) why = what;
    return false;
  }
  void ws() {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) ++p;
  }
  bool lit(const char* word) {
    size_t n = std::strlen(word);
    if (static_cast<size_t>(end - p) < n || std::memcmp(p, word, n) != 0) return fail("bad literal");
    p += n;
    return true;
  }
  static void utf8(std::string* s, unsigned cp) {
    if (cp < 0x80) {
      s->push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      s->push_back(static_cast<char>(0xC0 | (cp >> 6)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      s->push_back(static_cast<char>(0xE0 | (cp >> 12)));
      s->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      s->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
  }
  bool string(std::string* out) {
    ++p;  // opening quote
    while (p < end && *p != '"') {
      const unsigned char u = static_cast<unsigned char>(*p);
      if (u < 0x20) return fail("control character in string");
      if (u >= 0x80) {
        size_t n = utf8_len(reinterpret_cast<const unsigned char*>(p), static_cast<size_t>(end - p));
        if (n == 0) return fail("invalid UTF-8 in string");
        out->append(p, n);
        p += n;
        continue;
      }
      char c = *p++;
      if (c != '\\') {
        out->push_back(c);
        continue;
      }
      if (p >= end) return fail("truncated escape");
      char e = *p++;
      switch (e) {
        case '"': case '\\': case '/': out->push_back(e); break;
        case 'b': out->push_back('\b'); break;
        case 'f': out->push_back('\f'); break;
        case 'n': out->push_back('\n'); break;
        case 'r': out->push_back('\r'); break;
        case 't': out->push_back('\t'); break;
        case 'u': {
          if (end - p < 4) return fail("truncated \\u");
          unsigned cp = 0;
          for (int i = 0; i < 4; ++i) {
            char h = p[i];
            int d = (h >= '0' && h <= '9') ? h - '0'
                    : (h >= 'a' && h <= 'f') ? h - 'a' + 10
                    : (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
            if (d < 0) return fail("bad \\u");
            cp = cp * 16 + static_cast<unsigned>(d);
          }
          p += 4;
          // A NUL inside a string would cut it short wherever it is used as a C string.
          if (cp == 0) return fail("NUL in string");
          // Surrogate pairs are not needed by the protocol; keep them as U+FFFD.
          utf8(out, (cp >= 0xD800 && cp <= 0xDFFF) ? 0xFFFD : cp);
          break;
        }
        default: return fail("bad escape");
      }
    }
    if (p >= end) return fail("unterminated string");
    ++p;
    return true;
  }
  bool digits() {
    const char* s = p;
    while (p < end && *p >= '0' && *p <= '9') ++p;
    return p != s;
  }
  bool number(Value* v) {
    // The JSON grammar, checked here: strtod alone takes "+1", "1.", ".5", "inf"...
    const char* s = p;
    if (p < end && *p == '-') ++p;
    if (p < end && *p == '0') {
      ++p;
    } else if (!digits()) {
      return fail("bad number");
    }
    if (p < end && *p == '.') {
      ++p;
      if (!digits()) return fail("bad number");
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
      ++p;
      if (p < end && (*p == '+' || *p == '-')) ++p;
      if (!digits()) return fail("bad number");
    }
    if (p - s > 64) return fail("number too long");
    std::string tok(s, p);  // strtod needs a terminator: copy the (short) token
    v->num = std::strtod(tok.c_str(), nullptr);
    if (!std::isfinite(v->num)) return fail("number out of range");
    v->type = Value::Type::Number;
    return true;
  }
  bool value(Value* v, int depth) {
    if (depth > kMaxDepth) return fail("nesting too deep");
    ws();
    if (p >= end) return fail("unexpected end");
    char c = *p;
    if (c == '{') {
      v->type = Value::Type::Object;
      ++p;
      ws();
      if (p < end && *p == '}') { ++p; return true; }
      for (;;) {
        ws();
        if (p >= end || *p != '"') return fail("expected key");
        std::string k;
        if (!string(&k)) return false;
        ws();
        if (p >= end || *p != ':') return fail("expected ':'");
        ++p;
        v->obj.emplace_back(std::move(k), Value());
        if (!value(&v->obj.back().second, depth + 1)) return false;
        ws();
        if (p < end && *p == ',') { ++p; continue; }
        if (p < end && *p == '}') { ++p; return true; }
        return fail("expected ',' or '}'");
      }
    }
    if (c == '[') {
      v->type = Value::Type::Array;
      ++p;
      ws();
      if (p < end && *p == ']') { ++p; return true; }
      for (;;) {
        v->arr.emplace_back();
        if (!value(&v->arr.back(), depth + 1)) return false;
        ws();
        if (p < end && *p == ',') { ++p; continue; }
        if (p < end && *p == ']') { ++p; return true; }
        return fail("expected ',' or ']'");
      }
    }
    if (c == '"') {
      v->type = Value::Type::String;
      return string(&v->s);
    }
    if (c == 't') { v->type = Value::Type::Bool; v->b = true; return lit("true"); }
    if (c == 'f') { v->type = Value::Type::Bool; return lit("false"); }
    if (c == 'n') { v->type = Value::Type::Null; return lit("null"); }
    return number(v);
  }
};

}  // namespace

bool parse(const char* text, size_t n, Value* out, std::string* why) {
  Parser ps{text, text + n, {}};
  *out = Value();
  bool ok = ps.value(out, 0);
  if (ok) {
    ps.ws();
    if (ps.p != ps.end) ok = ps.fail("trailing data");
  }
  if (!ok && why != nullptr) *why = ps.why;
  return ok;
}

}  // namespace jitc::json
