// Markup put inside words, which a reader never sees: HTML tags and comments, markdown's emphasis and code marks.
#pragma once

#include <string>
#include <string_view>

namespace lg {

// The text with the markup that cuts a word in pieces taken out, so that the word is read: "b<b></b>omb",
// "bo<!-- -->mb", "b**o**mb", "b`o`mb" and "b&shy;omb" are drawn as "bomb" (rendered, the markup shows nothing or only
// a letter's weight), while a subword tokenizer reads pieces no guard was trained on. HTML character references that
// cut or spell part of a word are read as their characters ("b&#x6f;mb", "&#98;omb"), and terminal escape sequences
// ("\x1b[1m") are taken out wherever they stand. Markup between words or around whole words ("**bold**",
// "<b>Note</b>", "&#8220;word&#8221;") stays, as does a lone mark inside a word ("d**n", a word censored). Text without
// such markup is returned as it is.
std::string read_through_markup(std::string_view text);

// Whether text[begin, end) stands inside a word: between two ASCII letters, or a letter and a digit ("b0<b></b>mb",
// "b0😊mb": leetspeak is read later, as letters). What folding takes out only there: markup and pictographs.
bool inside_word(std::string_view text, size_t begin, size_t end);

}  // namespace lg
