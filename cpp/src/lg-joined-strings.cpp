#include "lg-decode.h"
#include "lg-fold.h"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <iterator>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

enum class token_kind { name, literal, plus, assign, line_break, other, end_of_text };

struct token {
    token_kind kind;
    size_t begin, end;       // the token's bytes in the text
    std::string_view value;  // a name as written, a literal's contents
};

bool is_name_char(char c) { return lg::is_ascii_alnum(c) || c == '_' || static_cast<unsigned char>(c) >= 0x80; }

// The quotes a string literal is written between: ASCII ones and the typographic pairs word processors write
struct quote_pair {
    std::string_view open, close;
    bool apostrophe;  // also written inside words ("don't"): opens after no letter, closes before none
};
constexpr quote_pair quotes[] = {
    {"\"", "\"", false},
    {"`", "`", false},
    {"'", "'", true},
    {"\xE2\x80\x9C", "\xE2\x80\x9D", false},  // “ ”
    {"\xE2\x80\x98", "\xE2\x80\x99", true},   // ‘ ’
};

// Reads a text as names, string literals, '+', '=' (or ':='), line breaks and other characters, one token at a time
// from any position (spaces and tabs separate tokens), so that parsing holds no list of them. A literal closes on its
// line, or its quote is another character. Linear over a parse that moves forward: where a quote found no close up to
// its line's end, no later quote of its kind on that line looks again, and a line's end is looked for once.
class tokenizer {
  public:
    explicit tokenizer(std::string_view text) : text(text) {}

    // The token at byte i or after it
    token at(size_t i) {
        while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) {
            ++i;
        }
        if (i >= text.size()) {
            return {token_kind::end_of_text, i, i, {}};
        }
        const char c = text[i];
        if (c == '\n' || c == '\r') {
            return {token_kind::line_break, i, i + 1, {}};
        }
        if (std::optional<token> literal = literal_at(i)) {
            return *literal;
        }
        if (is_name_char(c) || c == '$') {
            size_t end = i + 1;
            while (end < text.size() && is_name_char(text[end])) {
                ++end;
            }
            return {token_kind::name, i, end, text.substr(i, end - i)};
        }
        if (c == '+') {
            return {token_kind::plus, i, i + 1, {}};
        }
        if (c == '=' && text.substr(i + 1, 1) != "=") {
            return {token_kind::assign, i, i + 1, {}};
        }
        if (c == ':' && text.substr(i + 1, 1) == "=") {
            return {token_kind::assign, i, i + 2, {}};
        }
        // '==' and the like are one token, so that "a == b" is no assignment
        size_t end = i + 1;
        while (end < text.size() && text[end] == '=') {
            ++end;
        }
        return {token_kind::other, i, end, {}};
    }

  private:
    std::optional<token> literal_at(size_t i) {
        for (size_t q = 0; q < std::size(quotes); ++q) {
            const quote_pair & quote = quotes[q];
            if (text.compare(i, quote.open.size(), quote.open) != 0 || i < no_close_before[q] ||
                (quote.apostrophe && i > 0 && is_name_char(text[i - 1]))) {
                continue;
            }
            const std::string_view line = text.substr(0, line_end(i));
            const size_t from = i + quote.open.size();
            for (size_t k = line.find(quote.close, from); k != std::string_view::npos;
                 k = line.find(quote.close, k + 1)) {
                const size_t after = k + quote.close.size();
                if (!quote.apostrophe || after >= text.size() || !is_name_char(text[after])) {
                    return token{token_kind::literal, i, after, text.substr(from, k - from)};
                }
            }
            no_close_before[q] = line.size();
        }
        return std::nullopt;
    }

    // Where the line holding byte i ends
    size_t line_end(size_t i) {
        if (i < line_from || i > cached_line_end) {
            line_from = i;
            cached_line_end = std::min(text.find_first_of("\r\n", i), text.size());
        }
        return cached_line_end;
    }

    std::string_view text;
    size_t no_close_before[std::size(quotes)] = {};  // a quote of this kind opened before here finds no close
    size_t line_from = SIZE_MAX;                     // the line's end from line_from on is cached_line_end
    size_t cached_line_end = 0;
};

// The strings a text joins, as a forest: a node is a literal's contents or the nodes it joins, in order. A name's
// string is joined once, so each node has one parent at most, and a string passed along a chain of names
// ("b = a + 'x'; c = 'y' + b; ...") is spelled out once, at the end, in time linear in the text.
class strings {
  public:
    size_t literal(std::string_view contents) {
        nodes.push_back({contents, {}});
        return nodes.size() - 1;
    }

    size_t join(std::vector<size_t> pieces) {
        nodes.push_back({{}, std::move(pieces)});
        return nodes.size() - 1;
    }

    // What a node spells; a stack, not recursion, since chains of names can be as long as the text
    std::string spelled(size_t root) const {
        std::string out;
        std::vector<size_t> stack{root};
        while (!stack.empty()) {
            const node & n = nodes[stack.back()];
            stack.pop_back();
            out += n.contents;
            stack.insert(stack.end(), n.pieces.rbegin(), n.pieces.rend());
        }
        return out;
    }

  private:
    struct node {
        std::string_view contents;
        std::vector<size_t> pieces;
    };
    std::vector<node> nodes;
};

// A name given a string: its statement's bytes and its string
struct assignment {
    size_t begin, end;  // the statement: name, '=', value
    size_t value_begin, value_end;
    size_t string;        // a node of the strings
    bool joined = false;  // the value joins two pieces or more
    bool used = false;    // joined into an expression read in its place: the statement goes
};

// A span of the text and the string node that reads in its place (none: the span goes)
struct edit {
    size_t begin, end;
    std::optional<size_t> string;
};

bool is_piece(const token & t) { return t.kind == token_kind::literal || t.kind == token_kind::name; }

}  // namespace

namespace lg {

std::optional<std::string> read_joined_strings(std::string_view text) {
    // a join needs a '+' and a quote; most texts have neither
    if (text.find('+') == std::string_view::npos || text.find_first_of("\"'`\xE2") == std::string_view::npos) {
        return std::nullopt;
    }
    tokenizer tokens(text);
    strings joined;
    std::vector<assignment> assignments;
    std::unordered_map<std::string_view, size_t> current;  // a name's latest assignment
    std::vector<edit> joins;                                // expressions outside assignments, read joined
    // an expression's pieces: a literal's contents, or the assignment of a name whose string it joins
    struct piece {
        std::string_view literal;
        size_t assignment = SIZE_MAX;
    };
    std::vector<piece> pieces;
    for (size_t pos = 0;;) {
        const token first = tokens.at(pos);
        if (first.kind == token_kind::end_of_text) {
            break;
        }
        token value = first;
        bool assigns = false;
        if (first.kind == token_kind::name) {
            const token op = tokens.at(first.end);
            const token rhs = op.kind == token_kind::assign ? tokens.at(op.end) : op;
            if (op.kind == token_kind::assign && is_piece(rhs)) {
                value = rhs;
                assigns = true;
            }
        }
        if (!is_piece(value)) {
            pos = first.end;
            continue;
        }
        // a name's string is joined where the name is first joined; named again, it adds nothing, so a reading holds
        // no more than the text as written and a repeated name hides nothing
        pieces.clear();
        bool known = true;
        size_t n_pieces = 0;
        size_t end = value.end;
        for (token t = value;;) {
            ++n_pieces;
            end = t.end;
            if (t.kind == token_kind::literal) {
                pieces.push_back({t.value});
            } else if (const auto it = current.find(t.value); it == current.end()) {
                known = false;
            } else if (!assignments[it->second].used) {
                assignments[it->second].used = true;
                pieces.push_back({{}, it->second});
            }
            const token plus = tokens.at(t.end);
            const token next = plus.kind == token_kind::plus ? tokens.at(plus.end) : plus;
            if (plus.kind != token_kind::plus || !is_piece(next)) {
                break;
            }
            t = next;
        }
        const bool joins_something = n_pieces >= 2 && (assigns || !pieces.empty());
        if (!known || !(joins_something || (assigns && value.kind == token_kind::literal))) {
            for (const piece & p : pieces) {
                if (p.assignment != SIZE_MAX) {
                    assignments[p.assignment].used = false;  // left as written: their strings are still to be joined
                }
            }
            pos = end;
            continue;
        }
        std::vector<size_t> nodes;
        for (const piece & p : pieces) {
            nodes.push_back(p.assignment == SIZE_MAX ? joined.literal(p.literal) : assignments[p.assignment].string);
        }
        const size_t string = nodes.size() == 1 ? nodes[0] : joined.join(std::move(nodes));
        if (assigns) {
            current[first.value] = assignments.size();
            assignments.push_back({first.begin, end, value.begin, end, string, n_pieces >= 2});
        } else {
            joins.push_back({value.begin, end, string});
        }
        pos = end;
    }
    // what replaces each span, in order: nothing for a statement whose string was joined elsewhere, the joined text
    // for an expression
    std::vector<edit> edits;
    size_t j = 0;
    for (const assignment & a : assignments) {
        for (; j < joins.size() && joins[j].begin < a.begin; ++j) {
            edits.push_back(joins[j]);
        }
        if (a.used) {
            edits.push_back({a.begin, a.end, std::nullopt});
        } else if (a.joined) {
            edits.push_back({a.value_begin, a.value_end, a.string});
        }
    }
    edits.insert(edits.end(), joins.begin() + static_cast<std::ptrdiff_t>(j), joins.end());
    // The joined text is the message the chat model is asked to answer: on a line of its own, a prompt's line-by-line
    // reading reads it alone, not averaged into the instructions around it (lg::text_lines)
    std::vector<std::string> readings;
    bool read_any = false;
    for (const edit & e : edits) {
        const std::string spelled = e.string ? joined.spelled(*e.string) : std::string();
        read_any = read_any || !spelled.empty();
        readings.push_back(spelled.empty() ? std::string() : '\n' + fold_text(spelled) + '\n');
    }
    if (!read_any) {
        return std::nullopt;
    }
    size_t k = 0;  // the next edit
    return replace_runs(text, [&](std::string_view, size_t i) -> run_reading {
        if (k < edits.size() && edits[k].begin == i) {
            const size_t end = edits[k].end;
            return {end, std::move(readings[k++])};
        }
        return {k < edits.size() ? edits[k].begin : text.size(), std::nullopt};
    });
}

}  // namespace lg
