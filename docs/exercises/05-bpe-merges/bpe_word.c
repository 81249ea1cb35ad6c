// bpe(): one piece's bytes -> symbol ids, merged by rank. w [n] is scratch
// and receives the result; returns the number of symbols.
//   word = bytes as symbols, '</w>' on the last one:
//          t->byte_id[byte], and t->byte_id_w[byte] for the last byte
//   repeat: find the adjacent pair (w[i], w[i+1]) with the lowest merge rank
//          (merge_find(t, a, b) returns a slot; slot->key != 0 when the pair
//           is a merge, with slot->rank and slot->merged = the new symbol id);
//          replace every non-overlapping occurrence of that pair, left to
//          right, by the merged symbol;
//   until no adjacent pair is a merge.
static int bpe_word(const ldm_tokenizer *t, int *w, const uint8_t *s, int n) {
    // TODO: your code here
    return 0;
}
