"""Inputs the demo credit-risk model takes, shared by the tests that predict with it."""

APPLICANT = {
    "age": 41,
    "income": 52000,
    "loan_amount": 12000,
    "loan_term_months": 36,
    "credit_history_years": 9.5,
    "num_late_payments": 1,
    "debt_to_income": 0.35,
    "employment_type": "salaried",
    "home_ownership": "rent",
    "purpose": "car",
}
"""One applicant, as the README's /predict example sends it."""
