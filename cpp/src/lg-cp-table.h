// Tables keyed by code point (entries with a `cp` member, sorted by it), searched by binary search: folding's
// compatibility forms and look-alikes, the emoji read as words.
#pragma once

#include <algorithm>
#include <iterator>

namespace lg {

template <typename Table> constexpr bool sorted_by_cp(const Table & table) {
    for (size_t i = 1; i < std::size(table); ++i) {
        if (!(table[i - 1].cp < table[i].cp)) {
            return false;
        }
    }
    return true;
}

// The entry for cp, or nullptr
template <typename Table, typename Key> const auto * find_cp(const Table & table, Key cp) {
    const auto * end = std::end(table);
    const auto * it = std::lower_bound(std::begin(table), end, cp, [](const auto & e, Key c) { return e.cp < c; });
    return it != end && it->cp == cp ? it : nullptr;
}

}  // namespace lg
