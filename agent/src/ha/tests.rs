//! Decision-table tests: each case cites its row in docs/ha-decision-table.md.
