"""The billing review (the guide's Step 7): its arithmetic (figures, pure), what it reads (queries),
its page (page)."""
