{#- The distinct elements of an array column (order not kept). -#}
{% macro distinct_array(column) -%}
    {{ return(adapter.dispatch('distinct_array', 'postmodern')(column)) }}
{%- endmacro %}

{% macro default__distinct_array(column) -%}
    list_distinct({{ column }})
{%- endmacro %}

{% macro snowflake__distinct_array(column) -%}
    array_distinct({{ column }})
{%- endmacro %}
