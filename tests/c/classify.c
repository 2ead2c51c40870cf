/* A C integrator's program: links the static libloraguard (no libllama.so at run time), classifies a text,
 * and checks that bad input through the C API gets a status and a message, never an abort.
 *
 *   classify MODEL.gguf GUARD.gguf "text"      prints one JSON line and exits 0 (1 if flagged)
 */
#include "loraguard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int expect_error(lg_status status, lg_status expected, const char * what) {
    if (status != expected) {
        fprintf(stderr, "FAIL %s: status %d (%s), expected %d: %s\n", what, status, lg_status_name(status), expected,
                lg_last_error());
        return 1;
    }
    if (lg_last_error()[0] == '\0') {
        fprintf(stderr, "FAIL %s: no error message\n", what);
        return 1;
    }
    fprintf(stderr, "ok %s: %s\n", what, lg_last_error());
    return 0;
}

int main(int argc, char ** argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL.gguf GUARD.gguf TEXT\n", argv[0]);
        return 2;
    }
    int failures = 0;
    lg_model * model = NULL;
    lg_guard * guard = NULL;

    failures += expect_error(lg_model_load("/nonexistent/model.gguf", NULL, &model), LG_ERR_IO, "missing model");
    failures += expect_error(lg_model_load(NULL, NULL, &model), LG_ERR_INVALID_ARGUMENT, "NULL path");

    lg_model_params mparams = lg_model_default_params();
    if (lg_model_load(argv[1], &mparams, &model) != LG_OK) {
        fprintf(stderr, "error: %s\n", lg_last_error());
        return 2;
    }
    failures += expect_error(lg_guard_load(model, argv[1], NULL, &guard), LG_ERR_FORMAT, "model given as guard");
    lg_guard_params gparams = lg_guard_default_params();
    gparams.n_threads = 1;
    if (lg_guard_load(model, argv[2], &gparams, &guard) != LG_OK) {
        fprintf(stderr, "error: %s\n", lg_last_error());
        lg_model_free(model);
        return 2;
    }

    const int32_t n_labels = lg_guard_n_labels(guard);
    float * logits = calloc((size_t) n_labels, sizeof(float));
    float * probs = calloc((size_t) n_labels, sizeof(float));
    uint8_t * flagged = calloc((size_t) n_labels, 1);

    const char bad_utf8[] = {'o', 'k', (char) 0xC3, (char) 0x28, 0};
    const char with_nul[] = {'a', 0, 'b'};
    lg_input bad = {bad_utf8, strlen(bad_utf8), NULL, 0};
    failures += expect_error(lg_guard_classify(guard, &bad, 1, logits, probs, flagged), LG_ERR_INVALID_ARGUMENT,
                             "invalid UTF-8");
    bad.prompt = with_nul;
    bad.prompt_len = sizeof(with_nul);
    failures += expect_error(lg_guard_classify(guard, &bad, 1, logits, probs, flagged), LG_ERR_INVALID_ARGUMENT,
                             "NUL byte");
    bad.prompt = "";
    bad.prompt_len = 0;
    failures += expect_error(lg_guard_classify(guard, &bad, 1, logits, probs, flagged), LG_ERR_INVALID_ARGUMENT,
                             "empty text");
    failures += expect_error(lg_guard_classify(NULL, &bad, 1, logits, probs, flagged), LG_ERR_INVALID_ARGUMENT,
                             "NULL guard");

    // A NULL entry among the stop strings is an argument error, not a crash (stories260K has a chat path).
    lg_chat * chat = NULL;
    if (lg_chat_create(model, NULL, &chat) == LG_OK) {
        const char * stops[] = {"end", NULL};
        lg_generate_params gen = lg_generate_default_params();
        gen.max_tokens = 4;
        gen.stop = stops;
        gen.n_stop = 2;
        failures += expect_error(lg_chat_generate(chat, "Once", 4, &gen, NULL), LG_ERR_INVALID_ARGUMENT,
                                 "NULL stop string");
        lg_chat_free(chat);
    }

    // The guard holds its own reference to the model: freeing the model first is safe.
    lg_model_free(model);
    model = NULL;

    lg_input input = {argv[3], strlen(argv[3]), NULL, 0};
    if (lg_guard_classify(guard, &input, 1, logits, probs, flagged) != LG_OK) {
        fprintf(stderr, "error: %s\n", lg_last_error());
        return 2;
    }
    int any = 0;
    printf("{\"flagged\": ");
    for (int32_t i = 0; i < n_labels; ++i) {
        any |= flagged[i];
    }
    printf("%s, \"scores\": {", any ? "true" : "false");
    for (int32_t i = 0; i < n_labels; ++i) {
        printf("%s\"%s\": %.6f", i ? ", " : "", lg_guard_label(guard, i), probs[i]);
    }
    printf("}, \"logits\": [");
    for (int32_t i = 0; i < n_labels; ++i) {
        printf("%s%.6f", i ? ", " : "", logits[i]);
    }
    printf("]}\n");

    free(logits);
    free(probs);
    free(flagged);
    lg_guard_free(guard);
    lg_model_free(model);
    if (failures) {
        fprintf(stderr, "%d bad-input checks failed\n", failures);
        return 3;
    }
    return any ? 1 : 0;
}
