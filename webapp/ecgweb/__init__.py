"""Django project of the ecgpaper web service (paper section 3.4, Fig. 4)."""
