"""Model adapters (the only code that knows model families), the built-in small classifiers,
and the Hugging Face loader. Import the modules themselves: this package re-exports nothing,
so that importing an adapter never imports a loader."""
