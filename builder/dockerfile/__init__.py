"""The Dockerfile front end: text in, typed instructions out. No I/O, no execution."""
