// One pre-tokenized piece's bytes s[0..n) -> its BPE symbol ids in w (w has
// room for n ids and is also your scratch); returns the number of symbols.
// What the tokenizer gives you:
//   t->byte_id[byte], t->byte_id_w[byte]   a byte's symbol, plain and with '</w>'
//   merge_find(t, a, b)                    the slot of the pair (a, b): slot->key
//                                          != 0 when it is a merge, then
//                                          slot->rank and slot->merged (the new id)
static int bpe_word(const ldm_tokenizer *t, int *w, const uint8_t *s, int n) {
    // TODO: your code here
    return 0;
}
