"""Accounts: registration, sign-in and sessions, passwords, profiles and the admin's user management."""
