"""The stages, in the order data flows: tokenizer -> bucketer -> session -> pooling, with
the windows that keep the tokenizer a step ahead, and the `Pipeline` that runs them."""
