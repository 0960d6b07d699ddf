// Hand-written JSON writer (async-signal-safe) and reader (agent thread). See json.h.
#include "json.h"

#include <time.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

namespace jitc::json {

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
  for (const unsigned char* p = reinterpret_cast<const unsigned char*>(s); *p != 0; ++p) {
    unsigned char c = *p;
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
      put(static_cast<char>(c));  // UTF-8 passes through unchanged
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
          char hex[5] = {p[0], p[1], p[2], p[3], 0};
          char* stop = nullptr;
          unsigned cp = static_cast<unsigned>(std::strtoul(hex, &stop, 16));
          if (stop != hex + 4) return fail("bad \\u");
          p += 4;
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
  bool number(Value* v) {
    // strtod needs a terminator: copy the (short) token.
    const char* s = p;
    while (p < end && std::strchr("+-0123456789.eE", *p) != nullptr) ++p;
    std::string tok(s, p);
    char* stop = nullptr;
    v->num = std::strtod(tok.c_str(), &stop);
    if (tok.empty() || *stop != '\0') return fail("bad number");
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
