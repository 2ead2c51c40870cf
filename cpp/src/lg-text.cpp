#include "lg-text.h"

#include "lg-error.h"

#include <cstdint>

namespace lg {

uint32_t decode_valid_utf8(std::string_view text, size_t i, size_t & len) {
    const auto lead = static_cast<unsigned char>(text[i]);
    len = lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
    uint32_t cp = len == 1 ? lead : len == 2 ? lead & 0x1F : len == 3 ? lead & 0x0F : lead & 0x07;
    for (size_t k = 1; k < len; ++k) {
        cp = (cp << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
    }
    return cp;
}

bool append_utf8(std::string & out, uint32_t cp) {
    if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
        return false;
    }
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return true;
}

size_t invalid_utf8_offset(std::string_view s) {
    size_t i = 0;
    const auto * p = reinterpret_cast<const unsigned char *>(s.data());
    while (i < s.size()) {
        const unsigned char c = p[i];
        size_t n = 0;
        uint32_t cp = 0;
        if (c < 0x80) {
            ++i;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            n = 1, cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            n = 2, cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            n = 3, cp = c & 0x07;
        } else {
            return i;
        }
        if (i + n >= s.size()) {  // sequence cut off by the end of the text
            return i;
        }
        for (size_t k = 1; k <= n; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) {
                return i;
            }
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        // overlong forms, surrogates and code points past U+10FFFF are not valid UTF-8
        const uint32_t min_cp[] = {0, 0x80, 0x800, 0x10000};
        if (cp < min_cp[n] || (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
            return i;
        }
        i += n + 1;
    }
    return std::string_view::npos;
}

void check_text(std::string_view text, const char * field) {
    if (text.empty()) {
        fail(LG_ERR_INVALID_ARGUMENT, std::string(field) + " is empty: give some text to classify");
    }
    check_encoding(text, field);
}

void check_encoding(std::string_view text, const char * field) {
    if (const size_t nul = text.find('\0'); nul != std::string_view::npos) {
        fail(LG_ERR_INVALID_ARGUMENT,
             std::string(field) + " contains a NUL byte at offset " + std::to_string(nul) + ": strip it first");
    }
    if (const size_t bad = invalid_utf8_offset(text); bad != std::string_view::npos) {
        fail(LG_ERR_INVALID_ARGUMENT, std::string(field) + " is not valid UTF-8 (first bad byte at offset " +
                                          std::to_string(bad) + "): decode it to text first");
    }
}

}  // namespace lg
