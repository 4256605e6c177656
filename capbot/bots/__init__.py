"""Chat front-ends: translate updates into command requests and replies back."""
