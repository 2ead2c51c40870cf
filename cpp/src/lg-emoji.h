// Emoji that stand for a word: the table lg::read_emoji_words reads (lg-decode.h), shared with folding, which leaves
// them where they stand so that they are read as their words.
#pragma once

#include <cstdint>

namespace lg {

// Whether the code point is an emoji read as a word (💣 "bomb", 🔫 "gun"; lg-emoji.cpp)
bool emoji_stands_for_word(uint32_t cp);

}  // namespace lg
