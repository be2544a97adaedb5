from .writer import main

main()
