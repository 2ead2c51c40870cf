// A third way a guard reads a text: line by line, so that a request pasted among benign paragraphs is judged on its
// own instead of averaged into them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace lg {

// The lines of a folded text that a guard reads alone beside the whole text, or none when it holds fewer than two
// lines with something on them. Lines end at any line break a reader sees (\n, \r, \v, \f, U+0085, U+2028,
// U+2029); each is trimmed of spaces and tabs, blank lines are skipped and a line repeated is read once. Where the
// text has a decoded reading with two lines or more, those of its lines that neither a written line nor a written
// line's own decoded reading already is follow (a request buried in base64 of several paragraphs).
std::vector<std::string> text_lines(std::string_view folded);

}  // namespace lg
