"""A finished run as plain peft / transformers files, with the template that loads them without peftx."""
