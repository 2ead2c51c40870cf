// The text a guard reads: its input folded the way a reader sees through it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace lg {

// Folds valid UTF-8 text (checked before) so that characters a reader sees as plain letters reach the guard as those
// letters: compatibility forms to their NFKC form (fullwidth, mathematical, circled, super- and subscript letters,
// ligatures; lg-fold-table.inc), small capitals and the regional indicators flags are made of to the letters they are
// drawn as ("ʜᴏᴡ", "🇭🇴🇼"), invisible default-ignorable code points removed (zero-width spaces and joiners, soft
// hyphens, bidirectional controls, variation selectors; tags that spell ASCII read as that ASCII, so text hidden in
// them is read), and in a word that holds Latin letters, Cyrillic, Greek and Armenian letters drawn like Latin ones
// replaced by them, and letters spaced out joined into the words they spell ("b o m b", "F-R-A-U-D", "b|o|m|b", one
// letter per line, "h-o-w- -t-o"; not initials or chat shorthand: "U.S.A.", "r u a"), and emoji and other
// pictographs put inside words taken out ("bo😊mb"), as is markup ("b<b></b>omb", "b**o**mb", "b&shy;omb", HTML
// references to letters in a word, "b&#x6f;mb", read as the letters, and terminal escapes; lg-markup.h). ASCII text
// changes only where letters are spaced out, markup cuts a word or a terminal escape stands.
std::string fold_text(std::string_view text);

// Whether folding removes the code point: Unicode's Default_Ignorable_Code_Point, drawn as nothing (but the Hangul
// fillers, and the tag characters that spell ASCII, which are read as it).
bool is_ignorable(uint32_t cp);

}  // namespace lg
