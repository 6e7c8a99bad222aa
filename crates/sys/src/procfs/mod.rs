//! Parsers for /proc files: pure functions over text, plus thin readers.
